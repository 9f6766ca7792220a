"""Quantized base models: bitsandbytes 4-bit (NF4/FP4, double quantization) and 8-bit (LLM.int8) for QLoRA, and
models already quantized with GPTQ/AWQ/AQLM (loaded through transformers when their packages are installed)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Literal, Optional

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


class Quantization:
    """Base of the on-load quantization methods a recipe names as ``model.quantization`` by class path.

    A method turns the weight dtype into the ``quantization_config`` that transformers' ``from_pretrained`` takes.
    The builder enforces the rest: a pre-trained ``path`` only (not an inline config), only adapters train, no
    FSDP/DeepSpeed (``lit_factory.distributed.checks``).
    """

    def quantization_config(self, compute_dtype: "torch.dtype") -> Any:
        """The transformers quantization config to load the base model with."""
        raise NotImplementedError


class BitsAndBytes(Quantization):
    """bitsandbytes quantization on load (QLoRA): ``transformers.BitsAndBytesConfig`` from three settings.

    A thin wrapper rather than ``BitsAndBytesConfig`` itself: the compute dtype is the run's weight dtype
    (``model.dtype: auto`` resolves per device), which a recipe cannot write down beforehand.

    Args:
        bits: 4 (NF4/FP4, QLoRA) or 8 (LLM.int8).
        quant_type: 4-bit only: ``nf4`` (normal float, QLoRA's choice) or ``fp4``.
        double_quantization: 4-bit only: also quantize the quantization constants (QLoRA's double quantization).
    """

    def __init__(self, bits: Literal[4, 8] = 4, quant_type: Literal["nf4", "fp4"] = "nf4",
                 double_quantization: bool = True) -> None:
        if bits not in (4, 8):
            raise LitFactoryError(f"model.quantization.bits: {bits!r} is not 4 or 8; bitsandbytes quantizes to 4 "
                                  "(nf4/fp4) or 8 bits (LLM.int8)")
        if quant_type not in ("nf4", "fp4"):
            raise LitFactoryError(f"model.quantization.quant_type: {quant_type!r} is not nf4 or fp4")
        self.bits = bits
        self.quant_type = quant_type
        self.double_quantization = double_quantization

    def quantization_config(self, compute_dtype: "torch.dtype") -> Any:
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quantization,
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


def check_prequantized(config: "PretrainedConfig", requested: Optional[Quantization], path: str) -> Optional[str]:
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
