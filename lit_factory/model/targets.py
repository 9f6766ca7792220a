"""What ``target_modules: all`` means for an adapter: every linear layer but the output head, a VLM's vision side
and MoE routers, plus the fused expert weights of MoE blocks (3-D parameters, adapted through PEFT's
``target_parameters``).

Written here because PEFT's ``all-linear`` only knows ``nn.Linear``/``Conv1D``: it wraps routers that are linear
layers (Llama 4, PhiMoE, JetMoE, AFMoE, LongCat) and misses the experts that transformers 5 fuses into one
parameter; for the MoE families transformers converts from v4 checkpoints it even adds the router back
(``gate.weight``) and moves dense ``gate_proj``/``up_proj``/``down_proj`` layers onto the fused experts.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch import nn

# A module that picks experts: transformers names them *Router, *TopKRouter, *TopKGating (not *GatingMLP, a plain MLP).
ROUTER_CLASS = re.compile(r"Router|TopK|Gating$")
ROUTER_LEAF = re.compile(r"gate|router|classifier")
# PEFT refuses LoRA on these leaves of Mamba-style mixers (peft.tuners.tuners_utils._check_lora_target_modules_mamba:
# the selective-scan kernels read their weights directly), so `all` leaves them out for these model types.
MAMBA_MODEL_TYPES = {"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"}
MAMBA_UNADAPTABLE = {"out_proj", "conv1d"}
EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")


def expert_count(model: "nn.Module") -> Optional[int]:
    """How many routed experts each MoE layer has (None for a dense model)."""
    text = model.config.get_text_config()
    for name in EXPERT_COUNT_NAMES:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 1:
            return value
    value = getattr(getattr(text, "ffn_config", None), "moe_num_experts", None)  # DBRX
    return value if isinstance(value, int) and value > 1 else None


def router_modules(model: "nn.Module") -> list[str]:
    """Names of the modules that route tokens to experts: by class name, or a linear layer named like a gate
    whose outputs are one score per expert."""
    from torch import nn

    experts = expert_count(model)
    routers = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if ROUTER_CLASS.search(type(module).__name__):
            routers.append(name)
        elif (experts and isinstance(module, nn.Linear) and module.out_features == experts
              and ROUTER_LEAF.search(leaf)):
            routers.append(name)
    return routers


def adapter_targets(model: "nn.Module", exclude: Optional[str] = None,
                    with_parameters: bool = True) -> tuple[list[str], list[str]]:
    """``(target_modules, target_parameters)`` as full names: the linear layers (not the head, not ``exclude``,
    not inside a router) and, with ``with_parameters``, the 3-D fused expert weights (leading dimension = the
    expert count) for PEFT's ``target_parameters``. Without it (LoRA dropout or DoRA, which PEFT's parameter
    wrapper refuses; OFT) the experts are not adapted."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    routers = router_modules(model)

    def inside_router(name: str) -> bool:
        return any(name == r or name.startswith(r + ".") for r in routers)

    converted = _leaves_converted_by_peft(model)
    refused = MAMBA_UNADAPTABLE if getattr(model.config, "model_type", None) in MAMBA_MODEL_TYPES else set()
    modules, parameters = [], []
    for name, module in model.named_modules():
        if not _is_linear(module, (nn.Linear, Conv1D)) or module is head or inside_router(name):
            continue
        if (exclude is not None and re.fullmatch(exclude, name)) or name.rsplit(".", 1)[-1] in refused:
            continue
        if name.rsplit(".", 1)[-1] in converted:
            # PEFT would re-point this name at the fused experts; naming the weight keeps the layer itself (without
            # parameter targets PEFT cannot adapt it at all).
            if with_parameters:
                parameters.append(f"{name}.weight")
        else:
            modules.append(name)
    experts = expert_count(model)
    if with_parameters and experts:
        for name, parameter in model.named_parameters():
            owner = name.rpartition(".")[0]
            if parameter.ndim == 3 and parameter.shape[0] == experts and not inside_router(owner):
                parameters.append(name)
    return modules, parameters


def _is_linear(module: "nn.Module", linear_classes: tuple) -> bool:
    """A linear layer PEFT can wrap: torch's (bitsandbytes' subclass it) or GPT-2's ``Conv1D``, or a quantized
    kernel's leaf layer named like one (GPTQ ``QuantLinear``, AWQ ``WQLinear_*``, HQQ), as LLaMA-Factory finds them."""
    if isinstance(module, linear_classes):
        return True
    return ("Linear" in type(module).__name__ and hasattr(module, "in_features") and hasattr(module, "out_features")
            and not any(True for _ in module.children()))


def _leaves_converted_by_peft(model: "nn.Module") -> set[str]:
    """The module leaf names PEFT re-points when it converts LoRA configs of this architecture as v4 -> v5 MoE
    checkpoints (its own tables; nothing for other architectures or other PEFT versions)."""
    try:
        from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN, _MOE_TARGET_MODULE_MAPPING
    except ImportError:
        return set()
    pattern = _MODEL_TO_CONVERSION_PATTERN.get(getattr(model.config, "model_type", None))
    return set(_MOE_TARGET_MODULE_MAPPING.get(pattern, {}))
