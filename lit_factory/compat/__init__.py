"""Compatibility with other fine-tuning tools' files (LLaMA-Factory YAMLs: ``lit_factory.compat.llamafactory``)."""
