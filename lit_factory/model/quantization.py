"""Quantized base models: bitsandbytes 4-bit (NF4/FP4, double quantization) and 8-bit (LLM.int8) for QLoRA, and
models already quantized with GPTQ/AWQ/AQLM (loaded through transformers when their packages are installed)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Optional

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

#: Pre-quantized formats transformers loads, and the packages each needs (as transformers' quantizers check them).
PREQUANTIZED_PACKAGES: dict[str, list[str]] = {
    "gptq": ["optimum", "gptqmodel"],
    "awq": ["gptqmodel", "accelerate"],
    "aqlm": ["aqlm", "accelerate"],
}


def bitsandbytes_config(kind: str, double_quantization: bool, compute_dtype: "torch.dtype") -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``ModelArgs.quantization`` (``nf4``, ``fp4`` or ``int8``)."""
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quantization,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def prequantized_method(config: "PretrainedConfig") -> Optional[str]:
    """The ``quant_method`` a checkpoint was saved with (``gptq``, ``awq``, ``bitsandbytes``...), if any."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    return str(getattr(method, "value", method)).lower() if method is not None else None


def check_prequantized(config: "PretrainedConfig", requested: Optional[str], path: str) -> Optional[str]:
    """Refuse a second quantization and name the missing package of a GPTQ/AWQ/AQLM checkpoint in one line."""
    method = prequantized_method(config)
    if method is None:
        return None
    if requested is not None:
        raise LitFactoryError(
            f"model.quantization: {path!r} is already quantized ({method}); remove `quantization`"
        )
    missing = [name for name in PREQUANTIZED_PACKAGES.get(method, []) if importlib.util.find_spec(name) is None]
    if missing:
        raise LitFactoryError(
            f"model.path: {path!r} is {method.upper()}-quantized; loading it needs {' and '.join(missing)} "
            f"(pip install {' '.join(missing)})"
        )
    return method
