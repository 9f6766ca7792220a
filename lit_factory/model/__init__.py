"""The shared model builder and the fine-tuning methods (import-light: heavy libraries load on use)."""

from lit_factory.model.adapters import OFT, Finetuning, Freeze, Full, LlamaPro, LoRA
from lit_factory.model.builder import ModelArgs, build_inference_model, build_model, build_tokenizer

__all__ = ["Finetuning", "Freeze", "Full", "LlamaPro", "LoRA", "OFT", "ModelArgs", "build_inference_model", "build_model", "build_tokenizer"]
