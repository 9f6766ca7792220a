"""The board: a local web UI (Gradio) that configures, runs and watches fine-tuning — LLaMA-Factory's LlamaBoard.

``app.py`` builds the page and serves it (``lit-factory board``); ``tabs/`` holds one module per tab; ``recipe.py``
turns the Train tab's fields into a recipe; ``runs.py`` launches and watches ``lit-factory fit`` subprocesses;
``progress.py`` is the callback a run uses to report its progress; ``locales/`` holds the words in each language.
"""
