"""Evaluation: similarity.py (BLEU/ROUGE of generated text), choice.py (MMLU-style multiple choice)."""
