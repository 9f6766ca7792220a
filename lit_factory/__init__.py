"""lit-factory: efficient fine-tuning of large language models as PyTorch Lightning components.

Kept import-light on purpose: `lit-factory --help` and error messages must not wait for torch or lightning.
"""

__version__ = "0.1.0"
