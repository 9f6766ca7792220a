"""Inference: generation settings and engine (engine.py), terminal chat (chat.py), OpenAI-style API (serve.py)."""
