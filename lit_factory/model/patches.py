"""Model patches a recipe lists under ``model.patches`` — RoPE scaling, shifted sparse attention (S²-Attn), NEFTune,
fused LoRA, Liger's GPU kernels, compiled decoder layers — and what the builder always does: MoE blocks as DeepSpeed
ZeRO-3 leaf modules, the vision side of vision-language models.

A patch is a small component with the hooks it needs, e.g.
``patches: [{class_path: lit_factory.model.patches.NEFTune, init_args: {alpha: 5}}]``; a user's own subclass of
``Patch`` is named the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Optional

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig

    from lit_factory.model.builder import ModelArgs

#: Names of a VLM's vision tower and of its projector (into the language model) across transformers model families;
#: Qwen2-VL's projector (``merger``) sits inside its tower (``visual``).
VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger")
VISION_MODULE_NAMES = VISION_TOWER_NAMES + PROJECTOR_NAMES
S2_ATTENTION = "s2attn"

# ---- the patch components ----------------------------------------------------------------------------------------
class Patch:
    """Base of the model patches: a subclass overrides the hooks it needs (the others do nothing).

    ``build_model`` calls each hook of every listed patch in list order.

    Hooks, in the order the builder reaches them:
        ``check(args)``: when the model settings are read; raise a one-line error for settings it cannot run with.
        ``configure(config, load_options)``: before the weights load (training and inference): change the
            transformers config or the ``from_pretrained``/``from_config`` keyword arguments.
        ``patch_base(model, device)``: training, on the loaded base model before the fine-tuning method wraps it.
        ``patch_model(model)``: training, on the model the fine-tuning method returned.
    """

    def check(self, args: "ModelArgs") -> None:
        """Refuse model settings this patch cannot run with (``LitFactoryError``)."""

    def configure(self, config: "PretrainedConfig", load_options: dict[str, Any]) -> None:
        """Change the model's (text) config or its loading options before the weights load."""

    def patch_base(self, model: "nn.Module", device: "torch.device") -> None:
        """Patch the loaded base model in place, before the fine-tuning method."""

    def patch_model(self, model: "nn.Module") -> None:
        """Patch the model to train in place, after the fine-tuning method."""


class RopeScaling(Patch):
    """Stretch rotary position embeddings to the training length ``context_length``.

    The factor is ``ceil(context_length / max_position_embeddings)``; no change when the model's context already
    covers the length.

    Args:
        kind: ``linear`` (position interpolation) or ``dynamic`` (NTK-aware).
        context_length: The sequence length training uses (set it to the data's ``cutoff_len``).
    """

    def __init__(self, kind: Literal["linear", "dynamic"], context_length: int) -> None:
        if kind not in ("linear", "dynamic"):
            raise LitFactoryError(f"model.patches: RopeScaling kind {kind!r} is not linear or dynamic")
        self.kind = kind
        self.context_length = context_length

    def configure(self, config: "PretrainedConfig", load_options: dict[str, Any]) -> None:
        scale_rope(config.get_text_config(), self.kind, self.context_length)


class ShiftedSparseAttention(Patch):
    """Train with shifted sparse attention (S²-Attn, LongLoRA) for long contexts.

    Groups of a quarter of the sequence, half of the heads shifted by half a group; evaluation and generation use
    full attention. Runs on SDPA (``model.attn_implementation: sdpa``)."""

    def check(self, args: "ModelArgs") -> None:
        if args.attn_implementation != "sdpa":
            raise LitFactoryError("model.patches: ShiftedSparseAttention (shift_attn, S²-Attn) runs on SDPA; set "
                                  "model.attn_implementation: sdpa")

    def configure(self, config: "PretrainedConfig", load_options: dict[str, Any]) -> None:
        load_options["attn_implementation"] = register_shifted_sparse_attention()


class NEFTune(Patch):
    """NEFTune noise on the input embeddings during training (Jain et al., 2023); off in eval.

    Args:
        alpha: Noise scale: uniform noise of ``alpha / sqrt(seq_len * hidden)`` (the paper uses 5).
    """

    def __init__(self, alpha: float = 5.0) -> None:
        if not alpha > 0:
            raise LitFactoryError(f"model.patches: NEFTune alpha must be above 0, got {alpha}; remove the patch to "
                                  "train without noise")
        self.alpha = alpha

    def patch_model(self, model: "nn.Module") -> None:
        add_neftune(model, self.alpha)


class FastLoRA(Patch):
    """Run LoRA linear layers through lit-factory's fused autograd function (``lit_factory.model.lora_fast``).

    Layers it does not cover (DoRA, dropout, quantized) keep PEFT's forward."""

    def patch_model(self, model: "nn.Module") -> None:
        from lit_factory.model.lora_fast import use_fast_lora

        use_fast_lora(model)


class LigerKernels(Patch):
    """Liger's fused Triton kernels for RMSNorm, RoPE and SwiGLU (LLaMA-Factory's ``enable_liger_kernel``).

    CUDA only: a one-line error elsewhere; ``pip install 'lit-factory[liger]'``."""

    def patch_base(self, model: "nn.Module", device: "torch.device") -> None:
        apply_liger_kernels(model, device)  # before adapters: Liger patches the modules LoRA then wraps


class CompileLayers(Patch):
    """``torch.compile`` each decoder layer (the first steps are slower while it compiles)."""

    def patch_model(self, model: "nn.Module") -> None:
        compile_decoder_layers(getattr(model, "get_base_model", lambda: model)())


# ---- RoPE scaling ------------------------------------------------------------------------------------------------
def scale_rope(config: "PretrainedConfig", kind: str, context_length: Optional[int]) -> Optional[float]:
    """Set linear/dynamic RoPE scaling with factor ``ceil(context_length / max_position_embeddings)``.

    Returns the factor, or None when the model's context already covers ``context_length`` (no scaling needed).
    """
    if context_length is None:
        raise LitFactoryError("model.patches: RopeScaling needs context_length, the training length (the data's "
                              "cutoff_len)")
    native = getattr(config, "max_position_embeddings", None)
    parameters = getattr(config, "rope_parameters", None)
    if native is None or parameters is None:
        raise LitFactoryError(f"model.patches: RopeScaling: {config.model_type} has no rotary position embeddings to "
                              "scale; remove the patch")
    if context_length <= native:
        return None
    factor = float(math.ceil(context_length / native))
    config.rope_parameters = {**parameters, "rope_type": kind, "factor": factor}
    if kind == "dynamic":
        config.rope_parameters["original_max_position_embeddings"] = native
    return factor


# ---- NEFTune -----------------------------------------------------------------------------------------------------
def add_neftune(model: "nn.Module", alpha: float) -> None:
    """NEFTune (Jain et al., 2023): uniform noise of scale ``alpha / sqrt(seq_len * hidden)`` on the input
    embeddings in training mode only (transformers' hook, the one its Trainer uses)."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = alpha
    embeddings.register_forward_hook(neftune_post_forward_hook)


# ---- S²-Attn -----------------------------------------------------------------------------------------------------
def shifted_sparse_attention(
    module: "nn.Module",
    query: "torch.Tensor",
    key: "torch.Tensor",
    value: "torch.Tensor",
    attention_mask: Optional["torch.Tensor"],
    group_ratio: float = 0.25,
    **kwargs: Any,
) -> tuple["torch.Tensor", None]:
    """S²-Attn (LongLoRA, Chen et al., 2024, Algorithm 1) in training; exact SDPA attention in eval.

    Tokens attend causally within groups of ``group_ratio * T``; half of the heads see groups shifted by half a
    group, so information flows between neighbouring groups. Hand-written because transformers ships no S²-Attn;
    it plugs in through transformers' attention-function registry.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, length, dim = query.shape
    key = repeat_kv(key, heads // key.shape[1])
    value = repeat_kv(value, heads // value.shape[1])
    # Keys that are real tokens: the diagonal of the boolean causal+padding mask (None: no padding).
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        key_valid = attention_mask[:, 0].diagonal(dim1=-2, dim2=-1)[:, -length:]
    else:
        key_valid = torch.ones(batch, length, dtype=torch.bool, device=query.device)
    # Groups of an even size that divides the (padded) length: pad to a multiple of 8 / ratio's group count.
    groups = max(1, round(1 / group_ratio))
    padded = math.ceil(length / (2 * groups)) * 2 * groups
    pad = padded - length
    query, key, value = (F.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    key_valid = F.pad(key_valid, (0, pad), value=False)
    size = padded // groups
    half = heads // 2

    def shift(t: "torch.Tensor", steps: int) -> "torch.Tensor":  # roll the second half of the heads along T
        return torch.cat([t[:, :half], t[:, half:].roll(steps, dims=2)], dim=1)

    query, key, value = (shift(t, -size // 2) for t in (query, key, value))
    valid = shift(key_valid[:, None, :, None].expand(batch, heads, padded, 1), -size // 2)  # [B, H, T, 1]

    def grouped(t: "torch.Tensor") -> "torch.Tensor":  # [B, H, T, D] -> [B * groups, H, size, D]
        return t.reshape(batch, heads, groups, size, -1).transpose(1, 2).reshape(batch * groups, heads, size, -1)

    causal = torch.ones(size, size, dtype=torch.bool, device=query.device).tril()
    mask = causal & grouped(valid).transpose(-1, -2)  # [B*groups, H, size(q), size(k)]
    mask = mask | torch.eye(size, dtype=torch.bool, device=query.device)  # padded queries: never an empty row
    out = F.scaled_dot_product_attention(grouped(query), grouped(key), grouped(value), attn_mask=mask,
                                         scale=kwargs.get("scaling"))
    out = out.reshape(batch, groups, heads, size, dim).transpose(1, 2).reshape(batch, heads, padded, dim)
    out = shift(out, size // 2)[:, :, :length]
    return out.transpose(1, 2).contiguous(), None


def register_shifted_sparse_attention() -> str:
    """Register S²-Attn with transformers (attention function + SDPA's mask builder) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(S2_ATTENTION, shifted_sparse_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(S2_ATTENTION, sdpa_mask)
    return S2_ATTENTION


# ---- speed: Liger kernels, torch.compile --------------------------------------------------------------------------
def apply_liger_kernels(model: "nn.Module", device: "torch.device") -> None:
    """Swap the model's RMSNorm, rotary embedding and SwiGLU MLP for Liger's fused Triton kernels (LLaMA-Factory's
    ``enable_liger_kernel``). The loss head is not patched: the stages' ``ChunkedLogits`` already runs Liger's fused
    linear cross-entropy on CUDA. Raises a one-line error off CUDA (Triton kernels), without liger-kernel, or for a
    model type Liger does not cover — a recipe that asks for the kernels should not silently run without them."""
    if device.type != "cuda":
        raise LitFactoryError(
            f"model.patches: LigerKernels (liger_kernel): Liger's kernels are Triton GPU kernels and need CUDA; this "
            f"run is on {device.type}: remove the patch"
        )
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
    except ImportError:
        raise LitFactoryError("model.patches: LigerKernels (liger_kernel) needs liger-kernel: "
                              "pip install 'lit-factory[liger]'") from None
    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise LitFactoryError(
            f"model.patches: LigerKernels: Liger has no kernels for model type {model.config.model_type!r}; remove "
            "the patch"
        )
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def compile_decoder_layers(model: "nn.Module") -> int:
    """``torch.compile`` each decoder layer in place (``nn.Module.compile``), as torchtune does: the model keeps its
    class, so PEFT, saving and the loss head work unchanged, and a layer compiles once for all layers of its shape.
    Returns how many layers were compiled."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise LitFactoryError(f"model.patches: CompileLayers: {type(model).__name__}'s decoder has no `layers` to "
                              "compile; remove the patch")
    for layer in layers:
        layer.compile()
    return len(layers)


# ---- MoE and VLMs ------------------------------------------------------------------------------------------------
def moe_block_classes(model: "nn.Module") -> list[type]:
    """Classes of the model's mixture-of-experts blocks (Mixtral/Qwen2-MoE/DeepSeek style ``...MoeBlock``)."""
    classes = {type(m) for m in model.modules() if type(m).__name__.lower().endswith(("moeblock", "moe", "moelayer"))}
    return sorted(classes, key=lambda c: c.__name__)


def mark_moe_leaf_modules(model: "nn.Module") -> list[type]:
    """Make ZeRO-3 gather each MoE block's experts at once: with per-parameter fetching, tokens routed to
    different experts on different ranks deadlock. Returns the marked classes (empty for dense models)."""
    classes = moe_block_classes(model)
    if classes:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, classes)
    return classes


def vision_module_prefixes(model: "nn.Module", tower: bool = True, projector: bool = True) -> list[str]:
    """Full names of a VLM's outermost vision tower modules and/or projector modules (empty for text-only models)."""
    towers: list[str] = []
    projectors: list[str] = []
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        inside_tower = any(name.startswith(t + ".") for t in towers)
        if leaf in VISION_TOWER_NAMES and not inside_tower:
            towers.append(name)
        # `merger` is a generic word: it names a projector only inside a vision tower.
        elif leaf in PROJECTOR_NAMES and (leaf != "merger" or inside_tower) and not any(
                name.startswith(p + ".") for p in projectors):
            projectors.append(name)
    return (towers if tower else []) + (projectors if projector else [])


def vision_parameters(model: "nn.Module") -> tuple[list["nn.Parameter"], list["nn.Parameter"]]:
    """The parameters of a VLM's vision tower (its projector excluded) and of its projector."""
    towers = vision_module_prefixes(model, projector=False)
    projectors = vision_module_prefixes(model, tower=False)
    tower_params, projector_params = [], []
    for name, parameter in model.named_parameters():
        if any(name.startswith(p + ".") for p in projectors):
            projector_params.append(parameter)
        elif any(name.startswith(t + ".") for t in towers):
            tower_params.append(parameter)
    return tower_params, projector_params


def freeze_vision_modules(model: "nn.Module", tower: bool = True, projector: bool = True) -> list[str]:
    """Freeze the vision tower and/or the projector; returns the names of the frozen modules."""
    tower_params, projector_params = vision_parameters(model)
    for parameter in (tower_params if tower else []) + (projector_params if projector else []):
        parameter.requires_grad_(False)
    return vision_module_prefixes(model, tower, projector)


def is_vision_language(config: "PretrainedConfig") -> bool:
    """Whether a config describes an image-text model (it has a vision sub-config)."""
    return getattr(config, "vision_config", None) is not None
