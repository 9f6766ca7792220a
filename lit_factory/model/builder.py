"""The shared model builder: every stage gets its tokenizer and model from here.

A model comes either from a local directory / hub id (``path``) through the transformers Auto classes, or is built
with random weights from an inline transformers config (``config``) — what tests and the quickstart use. Plain
settings are typed fields of ``ModelArgs``; quantization and patches are parts the recipe names by class path
(``lit_factory.model.quantization``, ``lit_factory.model.patches``), whose hooks the builder calls in one place each.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from lit_factory.errors import LitFactoryError
from lit_factory.model.patches import Patch
from lit_factory.model.quantization import Quantization

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from lit_factory.model.adapters import Finetuning


@dataclass
class ModelArgs:
    """Which base model to build and how.

    Args:
        path: Local directory or hub id of a pre-trained model (loaded with ``AutoModelForCausalLM``).
        config: Inline transformers config (must name ``model_type``) for a randomly initialised model; used
            instead of ``path``. ``vocab_size`` and the special token ids default to the tokenizer's.
        tokenizer: Tokenizer directory or hub id; defaults to ``path``.
        adapter: A PEFT adapter folder to load on the base model: for LoRA training it is resumed (trained further),
            for inference it is applied to the base.
        dtype: Weight dtype. ``auto``: bfloat16 on CUDA with compute capability >= 8.0, float16 on older CUDA
            devices, float32 on CPU. Trainable parameters are always kept in float32.
        attn_implementation: ``sdpa`` (default), ``flash_attention_2`` (needs the flash-attn package) or ``eager``.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        new_special_tokens: Tokens to add to the tokenizer as special tokens; the embeddings are resized and the new
            rows initialised around the mean of the old ones.
        trust_remote_code: Allow model/tokenizer code from the model's repository to run.
        merge_adapter: Merge ``adapter`` into the base weights before fine-tuning, so that a NEW adapter (or any
            other method) trains on top of the merged model instead of resuming the old adapter.
        quantization: Quantize the pre-trained ``path`` model on load, by class path:
            ``lit_factory.model.quantization.BitsAndBytes`` (``bits: 4`` with ``quant_type: nf4``/``fp4`` and
            ``double_quantization``, or ``bits: 8``) for QLoRA. Only adapters train on a quantized model. Models saved
            already quantized (GPTQ/AWQ/AQLM/bitsandbytes) load as they are, without this option.
        patches: Model patches applied in list order, each by class path (``lit_factory.model.patches``):
            ``RopeScaling`` (kind, context_length), ``ShiftedSparseAttention`` (S²-Attn), ``NEFTune`` (alpha),
            ``FastLoRA``, ``LigerKernels`` (CUDA only), ``CompileLayers``; or a subclass of ``Patch`` of your own.
        freeze_vision_tower: Vision-language models: keep the vision tower frozen (and out of LoRA's ``all``
            targets, which otherwise cover its linear layers too).
        freeze_multi_modal_projector: Vision-language models: keep the projector from the vision tower into the
            language model frozen. LoRA's ``all`` never targets it; left trainable, it trains fully (with LoRA it is
            saved beside the adapter).
        image_max_pixels: Vision-language models with a variable resolution (Qwen2-VL): the image processor scales
            larger images down to at most this many pixels (fewer image tokens). Fixed-resolution towers (LLaVA)
            resize every image to their own size.
        image_min_pixels: Variable-resolution vision-language models: smaller images are scaled up to this many.
    """

    path: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    tokenizer: Optional[str] = None
    adapter: Optional[str] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    new_special_tokens: list[str] = field(default_factory=list)
    trust_remote_code: bool = False
    merge_adapter: bool = False
    quantization: Optional[Quantization] = None
    patches: list[Patch] = field(default_factory=list)
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = True
    image_max_pixels: int = 768 * 768
    image_min_pixels: int = 32 * 32

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise LitFactoryError(
                "model: set exactly one of `model.path` (a pre-trained model) or `model.config` (random init)"
            )
        if self.tokenizer is None and self.path is None:
            raise LitFactoryError("model.tokenizer: a model built from `config` needs a tokenizer path")
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise LitFactoryError(
                f"model.adapter: {self.adapter!r} has no adapter_config.json; give a folder saved by a LoRA run"
            )
        if self.merge_adapter and self.adapter is None:
            raise LitFactoryError("model.merge_adapter: set `model.adapter` to the adapter folder to merge")
        if self.quantization is not None and self.path is None:
            raise LitFactoryError("model.quantization: quantizes a pre-trained `model.path`; not an inline config")
        if self.merge_adapter and self.quantization is not None:
            raise LitFactoryError("model.merge_adapter: cannot merge into quantized weights; export the merged model first")
        kinds = [type(patch) for patch in self.patches]
        twice = sorted({kind.__name__ for kind in kinds if kinds.count(kind) > 1})
        if twice:
            raise LitFactoryError(f"model.patches: {', '.join(twice)} is listed more than once; keep one")
        for patch in self.patches:
            patch.check(self)

    @property
    def tokenizer_path(self) -> str:
        from lit_factory.shipped import resolve_shipped_path

        return resolve_shipped_path(self.tokenizer or self.path)  # type: ignore[arg-type]


def resolve_dtype(name: str, device: "torch.device") -> "torch.dtype":
    """The weight dtype for ``name`` on ``device`` (see ``ModelArgs.dtype``)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def build_tokenizer(args: ModelArgs) -> "PreTrainedTokenizerBase":
    """Load the tokenizer, add ``new_special_tokens`` and make sure it has a pad token."""
    from transformers import AutoTokenizer

    source = args.tokenizer_path
    if not Path(source).exists() and ("/" not in source or source.startswith((".", "/"))):
        raise LitFactoryError(f"model.tokenizer: {source!r} is neither a directory nor a hub id; fix the path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LitFactoryError(f"model.tokenizer: cannot load a tokenizer from {source!r}: {first_line}") from err
    if args.new_special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(args.new_special_tokens)}, replace_extra_special_tokens=False
        )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_attention(name: str) -> None:
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise LitFactoryError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package "
            "(pip install flash-attn) — or set it to sdpa"
        )


def _load_config(args: ModelArgs, tokenizer: "PreTrainedTokenizerBase") -> "PretrainedConfig":
    from transformers import AutoConfig

    if args.config is None:
        try:
            return AutoConfig.from_pretrained(args.path, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError) as err:
            first_line = str(err).strip().splitlines()[0]
            raise LitFactoryError(f"model.path: cannot load a model from {args.path!r}: {first_line}") from err
    options = dict(args.config)
    model_type = options.pop("model_type", None)
    if model_type is None:
        raise LitFactoryError("model.config: add `model_type` (e.g. llama, qwen2) to the inline config")
    text_options = options.get("text_config", options) if isinstance(options.get("text_config"), dict) else options
    text_options.setdefault("vocab_size", len(tokenizer))
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        text_options.setdefault(name, getattr(tokenizer, name))
    if "vision_config" in options:  # the image tokens the model looks for are the tokenizer's
        from lit_factory.data.media import PLUGINS

        if model_type in PLUGINS:
            for name, token_id in PLUGINS[model_type].config_token_ids(tokenizer).items():
                options.setdefault(name, token_id)
    try:
        return AutoConfig.for_model(model_type, **options)
    except ValueError as err:
        raise LitFactoryError(f"model.config.model_type: {err}") from err


def _load_base(
    args: ModelArgs,
    tokenizer: "PreTrainedTokenizerBase",
    dtype: "torch.dtype",
    device: Optional["torch.device"] = None,
    empty_weights: bool = False,
) -> "PreTrainedModel":
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from lit_factory.model import patches, quantization

    config = _load_config(args, tokenizer)
    options: dict[str, Any] = dict(dtype=dtype, attn_implementation=args.attn_implementation,
                                   trust_remote_code=args.trust_remote_code)
    for patch in args.patches:
        patch.configure(config, options)
    # Image-text models need their own Auto class: AutoModelForCausalLM would drop the vision tower.
    auto = AutoModelForImageTextToText if patches.is_vision_language(config) else AutoModelForCausalLM
    if empty_weights:  # the structure only, on the meta device: the weights arrive from another rank
        import torch

        with torch.device("meta"):
            return auto.from_config(config, **options)
    if args.config is not None:
        return auto.from_config(config, **options)
    quantization.check_prequantized(config, args.quantization, args.path)
    if args.quantization is not None:
        options["quantization_config"] = args.quantization.quantization_config(dtype)
        options["device_map"] = {"": device or "cpu"}  # bitsandbytes quantizes while placing the weights
    try:
        return auto.from_pretrained(args.path, config=config, **options)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0]
        raise LitFactoryError(f"model.path: cannot load a model from {args.path!r}: {first_line}") from err


def build_model(
    args: ModelArgs,
    tokenizer: "PreTrainedTokenizerBase",
    finetuning: Optional["Finetuning"] = None,
    device: Optional["torch.device"] = None,
    empty_weights: bool = False,
) -> "PreTrainedModel":
    """Build the base model, fit its embeddings to the tokenizer, apply the fine-tuning method.

    ``finetuning=None`` trains every parameter. Trainable parameters end up in float32 whatever the weight dtype,
    so that optimizer updates are not lost to rounding under mixed precision. ``empty_weights``: build the same
    structure on the meta device without reading any weights (a sharding strategy fills them in from rank 0);
    ignored for a quantized model or one that needs its weights here (an adapter to load or merge).
    """
    import torch

    from lit_factory.model.adapters import Full

    from lit_factory.model import patches

    _check_attention(args.attn_implementation)
    dtype = resolve_dtype(args.dtype, device or torch.device("cpu"))
    empty_weights = empty_weights and args.quantization is None and args.adapter is None
    model = _load_base(args, tokenizer, dtype, device, empty_weights)
    quantized = bool(getattr(model, "is_quantized", False))
    for patch in args.patches:  # before adapters: e.g. Liger patches the modules LoRA then wraps
        patch.patch_base(model, device or torch.device("cpu"))

    added_tokens = len(tokenizer) > model.get_input_embeddings().num_embeddings
    if added_tokens:
        # transformers samples the new rows around the mean of the old ones (mean_resizing), so new tokens start
        # with the statistics of real embeddings instead of a random scale.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=not empty_weights)

    if args.merge_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    if quantized:
        from peft import prepare_model_for_kbit_training

        # Norms and other unquantized weights go to float32 for stable training; checkpointing is set up below.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    if args.gradient_checkpointing:
        # Non-reentrant checkpointing needs no `enable_input_require_grads` trick for frozen embeddings.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    if args.adapter is not None and not args.merge_adapter:
        if not getattr(finetuning, "saves_adapter", False):
            raise LitFactoryError("model.adapter: resuming an adapter needs an adapter method as `finetuning` "
                                  "(lit_factory.model.LoRA or OFT)")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    else:
        patches.freeze_vision_modules(model, args.freeze_vision_tower, args.freeze_multi_modal_projector)
        model = (finetuning or Full()).apply(model, train_embeddings=added_tokens)
    # The vision side is frozen before AND after the method: LoRA's `all` leaves frozen parts out (see
    # adapters._vision_exclusions), and Full/Freeze set requires_grad themselves.
    patches.freeze_vision_modules(model, args.freeze_vision_tower, args.freeze_multi_modal_projector)
    if not args.freeze_multi_modal_projector and not (finetuning is not None and finetuning.saves_adapter):
        for parameter in patches.vision_parameters(model)[1]:  # Freeze trains an unfrozen projector too (as LF)
            parameter.requires_grad_(True)
    patches.mark_moe_leaf_modules(model)
    for patch in args.patches:
        patch.patch_model(model)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def build_media(args: ModelArgs, tokenizer: "PreTrainedTokenizerBase") -> Optional[Any]:
    """The image plugin of a vision-language model (:mod:`lit_factory.data.media`), None for a text-only model.

    A config that cannot be read gives None here: building the model reports that error."""
    from lit_factory.data.media import build_plugin
    from lit_factory.model.patches import is_vision_language

    try:
        config = _load_config(args, tokenizer)
    except LitFactoryError:
        return None
    if not is_vision_language(config):
        return None
    return build_plugin(config, tokenizer, args.path, args.image_min_pixels, args.image_max_pixels)


def build_inference_model(
    args: ModelArgs, tokenizer: "PreTrainedTokenizerBase", device: Optional["torch.device"] = None
) -> "PreTrainedModel":
    """The base model with ``args.adapter`` (if any) applied, in eval mode with gradients off, on ``device``."""
    import torch

    _check_attention(args.attn_implementation)
    device = device or torch.device("cpu")
    model = _load_base(args, tokenizer, resolve_dtype(args.dtype, device), device)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter)
    if not getattr(model, "is_quantized", False):  # bitsandbytes placed quantized weights on load; .to() refuses
        model = model.to(device)
    return model.eval().requires_grad_(False)
