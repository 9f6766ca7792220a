"""The Train tab's typed panels: model options (adapter, quantization, attention, RoPE scaling), the optimizer
(AdamW, GaLore, BAdam), the preference stages' own arguments (DPO, KTO, PPO), devices/strategy and the logger.

Each panel reads its values from a recipe (:func:`read_*`, the recipe's value or the class signature's default:
recipes and signatures are the single source of defaults) and writes the form's values back into the recipe
(:func:`write_*`), naming only keys that ``lit-factory fit`` accepts. The choices come from the classes that own
them (``ModelArgs``' and the model parts' ``Literal`` annotations, Lightning's strategy registry, the stages'
signatures), so a new option there appears here. The model panel's quantization and patch fields map to the parts
``model.quantization`` (``BitsAndBytes``) and ``model.patches`` (``RopeScaling``, ``ShiftedSparseAttention``,
``LigerKernels``, ``NEFTune``); other parts a recipe names are kept as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import typing
from typing import Any, Optional

from lit_factory.board.fields import parse_number
from lit_factory.errors import LitFactoryError

NONE = "none"  # the dropdown word for an option left unset (null in the recipe)
OPTIMIZERS = {"AdamW": "torch.optim.AdamW", "GaLore": "lit_factory.optim.GaLore", "BAdam": "lit_factory.optim.BAdam"}
LOGGERS = {"tensorboard": "lightning.pytorch.loggers.TensorBoardLogger", "csv": "lightning.pytorch.loggers.CSVLogger"}
# Arguments of the preference stages with their own typed fields (the rest stay in the stage options YAML).
STAGE_PANELS = {
    "DPO": ("beta", "loss_type", "label_smoothing", "sft_weight"),
    "KTO": ("beta", "desirable_weight", "undesirable_weight"),
    "PPO": ("reward_model", "reward_model_type", "ppo_epochs", "mini_batch_size", "max_new_tokens", "temperature",
            "top_p", "init_kl_coef", "target_kl", "cliprange", "vf_coef", "whiten_rewards"),
}
GALORE_ARGS = ("rank", "update_interval", "scale", "target_modules")
BADAM_ARGS = ("switch_every", "order")
BITSANDBYTES = "lit_factory.model.quantization.BitsAndBytes"
ROPE, S2_ATTN, LIGER, NEFTUNE = (f"lit_factory.model.patches.{name}" for name in
                                 ("RopeScaling", "ShiftedSparseAttention", "LigerKernels", "NEFTune"))
PANEL_PATCHES = (ROPE, S2_ATTN, LIGER, NEFTUNE)  # the patches the model panel shows; the others stay as written


def panel_field(stage: str, arg: str) -> str:
    """The form field of a stage argument: ``dpo_beta``, ``ppo_epochs`` (not ``ppo_ppo_epochs``)."""
    prefix = stage.lower() + "_"
    return prefix + arg.removeprefix(prefix)


STAGE_FIELDS = [panel_field(stage, arg) for stage, args in STAGE_PANELS.items() for arg in args]


# ---- choices -------------------------------------------------------------------------------------------------------
def _model_arg_choices(name: str) -> list[str]:
    from lit_factory.model.builder import ModelArgs

    hint = typing.get_type_hints(ModelArgs)[name]
    literal = next(arg for arg in [hint, *typing.get_args(hint)] if typing.get_origin(arg) is typing.Literal)
    return list(typing.get_args(literal))


def quantizations() -> list[str]:
    """``none`` plus what ``BitsAndBytes`` quantizes to: its 4-bit ``quant_type`` values (nf4, fp4), and int8."""
    types = literal_choices(BITSANDBYTES, "quant_type") or []
    return [NONE, *(kind for bits in literal_choices(BITSANDBYTES, "bits") or []
                    for kind in (types if bits == 4 else [f"int{bits}"]))]


def attentions() -> list[str]:
    """``ModelArgs.attn_implementation``'s values; flash_attention_2 only when flash-attn is installed."""
    return [name for name in _model_arg_choices("attn_implementation")
            if name != "flash_attention_2" or importlib.util.find_spec("flash_attn") is not None]


def liger_available() -> bool:
    """Whether liger-kernel is installed (the ``LigerKernels`` patch needs it, and CUDA at run time)."""
    return importlib.util.find_spec("liger_kernel") is not None


def rope_scalings() -> list[str]:
    """``none`` plus ``RopeScaling``'s kinds (linear, dynamic)."""
    return [NONE, *(literal_choices(ROPE, "kind") or [])]


def strategies() -> list[str]:
    """``auto`` and the strategy names Lightning's registry accepts for ``trainer.strategy`` (TPU/XLA and
    notebook/fork variants left out: they do not apply to a board on a workstation)."""
    from lightning.pytorch.strategies import StrategyRegistry

    skip = ("xla", "tpu", "notebook", "fork", "spawn", "_false")
    return ["auto", *(name for name in StrategyRegistry.available_strategies() if not any(s in name for s in skip))]


@functools.lru_cache(maxsize=None)
def signature_of(class_path: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of a class named by its import path."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return dict(inspect.signature(cls.__init__).parameters)


def _default(class_path: str, arg: str) -> Any:
    param = signature_of(class_path).get(arg)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def literal_choices(class_path: str, arg: str) -> Optional[list[str]]:
    """The values of a ``Literal`` constructor argument (a dropdown), else ``None``."""
    annotation = _annotation(class_path, arg)
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Literal else None


def stage_arg_choices(stage: str, arg: str) -> Optional[list[str]]:
    return literal_choices(f"lit_factory.stages.{stage}", arg)


def _annotation(class_path: str, arg: str) -> Any:
    module, _, name = class_path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return typing.get_type_hints(cls.__init__).get(arg, Any)


def stage_arg_kind(stage: str, arg: str) -> str:
    """How the form shows a stage argument: ``choice``, ``bool``, ``int``, ``float``, ``optional_float``, ``text``."""
    annotation = _annotation(f"lit_factory.stages.{stage}", arg)
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    args = set(typing.get_args(annotation))
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if args == {float, type(None)}:
        return "optional_float"
    return "text"


# ---- reading a recipe into the form --------------------------------------------------------------------------------
def _shown(value: Any) -> Any:
    return "" if value is None else value


def _quantization_label(part: Any) -> str:
    """The model panel's word for a ``model.quantization`` entry: none, nf4/fp4 or int8 for ``BitsAndBytes``, the
    class path of another method."""
    if not part:
        return NONE
    if not isinstance(part, dict):  # not a part: `fit` refuses it and says why
        return str(part)
    init_args = part.get("init_args") or {}
    if part.get("class_path") != BITSANDBYTES:
        return str(part.get("class_path"))
    bits = init_args.get("bits", _default(BITSANDBYTES, "bits"))
    return init_args.get("quant_type", _default(BITSANDBYTES, "quant_type")) if bits == 4 else f"int{bits}"


def _patch(patches: list[Any], class_path: str) -> Optional[dict[str, Any]]:
    """The entry of ``class_path`` in a recipe's ``model.patches``, if it lists one."""
    return next((p for p in patches if isinstance(p, dict) and p.get("class_path") == class_path), None)


def read_model_options(model_args: dict[str, Any]) -> dict[str, Any]:
    """The model panel's fields from ``model.init_args.model`` (``ModelArgs``' defaults where it says nothing)."""
    from lit_factory.model.builder import ModelArgs

    defaults = {f.name: f.default for f in dataclasses.fields(ModelArgs) if f.default is not dataclasses.MISSING}
    merged = {**defaults, **model_args}
    patches = merged.get("patches") or []
    rope, neftune = _patch(patches, ROPE), _patch(patches, NEFTUNE)
    return dict(
        adapter=merged.get("adapter") or "",
        quantization=_quantization_label(merged.get("quantization")),
        attn_implementation=merged.get("attn_implementation") or "sdpa",
        rope_scaling=(rope.get("init_args") or {}).get("kind", NONE) if rope else NONE,
        shift_attn=_patch(patches, S2_ATTN) is not None,
        liger_kernel=_patch(patches, LIGER) is not None,
        neftune_alpha=(neftune.get("init_args") or {}).get("alpha", _default(NEFTUNE, "alpha")) if neftune else 0.0,
        gradient_checkpointing=bool(merged.get("gradient_checkpointing")),
    )


def read_optimizer(optimizer: dict[str, Any]) -> dict[str, Any]:
    class_path = optimizer.get("class_path") or OPTIMIZERS["AdamW"]
    init_args = optimizer.get("init_args") or {}
    name = next((short for short, path in OPTIMIZERS.items() if path == class_path), class_path)
    if name == "BAdam":
        lr = ((init_args.get("optimizer") or {}).get("init_args") or {}).get("lr", 1e-5)
    else:
        lr = init_args.get("lr", _default(class_path, "lr") if "." in class_path else 1e-3)
    values: dict[str, Any] = dict(optimizer=name, learning_rate=str(lr))
    for arg in GALORE_ARGS:
        value = init_args.get(arg) if name == "GaLore" else None
        value = _default(OPTIMIZERS["GaLore"], arg) if value is None else value
        values[f"galore_{arg}"] = ", ".join(value) if isinstance(value, list) else value
    for arg in BADAM_ARGS:
        value = init_args.get(arg) if name == "BAdam" else None
        values[f"badam_{arg}"] = _default(OPTIMIZERS["BAdam"], arg) if value is None else value
    return values


def read_stage_panels(stage: str, stage_args: dict[str, Any]) -> dict[str, Any]:
    """Every stage panel's fields: the recipe's values for its own stage, signature defaults for the others."""
    values = {}
    for name, args in STAGE_PANELS.items():
        for arg in args:
            value = stage_args.get(arg) if name == stage and arg in stage_args else _default(
                f"lit_factory.stages.{name}", arg)
            values[panel_field(name, arg)] = _shown(value)
    return values


def read_trainer(trainer: dict[str, Any]) -> dict[str, Any]:
    logger = trainer.get("logger") or {}
    class_path = logger.get("class_path", "") if isinstance(logger, dict) else ""
    strategy = trainer.get("strategy", "auto")
    return dict(
        devices=str(trainer.get("devices", "auto")),
        strategy=strategy if isinstance(strategy, str) else str(strategy.get("class_path", "auto")),
        logger=next((short for short, path in LOGGERS.items() if path == class_path), "tensorboard"),
    )


# ---- writing the form into a recipe --------------------------------------------------------------------------------
def _set(section: dict[str, Any], key: str, value: Any, default: Any) -> None:
    """Write ``key`` when the recipe names it already or the value is not the default (the recipe stays short)."""
    if key in section or value != default:
        section[key] = value


def write_model_options(model_args: dict[str, Any], form: Any, method: str) -> None:
    """The model panel's values into ``model.init_args.model`` (``form`` is the Train tab's ``TrainForm``)."""
    adapter = (form.adapter or "").strip()
    if adapter:
        model_args["adapter"] = adapter
    else:
        model_args.pop("adapter", None)
    quantization = form.quantization or NONE
    existing = model_args.get("quantization")
    unchanged = quantization == _quantization_label(existing)  # a recipe's own method, or settings the form lacks
    if quantization not in quantizations() and not unchanged:
        raise LitFactoryError(f"quantization: {quantization!r} is unknown. Fix: pick one of {quantizations()}.")
    if quantization != NONE and "config" in model_args:
        raise LitFactoryError("quantization: quantizes a pre-trained model; the recipe's inline config builds random "
                              "weights. Fix: give a model path, or set quantization to none.")
    if quantization != NONE and method in ("Full", "Freeze"):
        raise LitFactoryError(f"quantization: only adapters train on a quantized model, not {method}. Fix: pick "
                              "LoRA (QLoRA), or set quantization to none.")
    if quantization == NONE:
        _set(model_args, "quantization", None, None)
    elif not unchanged:
        kept = dict(existing.get("init_args") or {}) if existing and existing.get("class_path") == BITSANDBYTES else {}
        kept.pop("quant_type", None)
        bits = int(quantization[3:]) if quantization.startswith("int") else 4
        model_args["quantization"] = {"class_path": BITSANDBYTES, "init_args": {
            **kept, "bits": bits, **({"quant_type": quantization} if bits == 4 else {})}}
    attention = form.attn_implementation or "sdpa"
    if attention not in attentions():
        raise LitFactoryError(f"attention: {attention!r} is not available here. Fix: pick one of {attentions()} "
                              "(flash_attention_2 needs the flash-attn package).")
    _set(model_args, "attn_implementation", attention, "sdpa")
    rope = form.rope_scaling or NONE
    if rope not in rope_scalings():
        raise LitFactoryError(f"RoPE scaling: {rope!r} is unknown. Fix: pick one of {rope_scalings()}.")
    if form.shift_attn and attention != "sdpa":
        raise LitFactoryError("S²-Attn: runs on SDPA attention. Fix: set attention to sdpa or turn S²-Attn off.")
    if form.liger_kernel and not liger_available():
        raise LitFactoryError("Liger kernels: liger-kernel is not installed. Fix: pip install 'lit-factory[liger]' "
                              "on a CUDA machine, or turn Liger off.")
    alpha = parse_number("NEFTune alpha", form.neftune_alpha or 0, float, 0)
    chosen: dict[str, dict[str, Any]] = {}
    if rope != NONE:  # stretch to the length training uses
        chosen[ROPE] = {"class_path": ROPE, "init_args": {
            "kind": rope, "context_length": parse_number("cutoff length", form.cutoff_len, int, 1)}}
    if form.shift_attn:
        chosen[S2_ATTN] = {"class_path": S2_ATTN}
    if form.liger_kernel:
        chosen[LIGER] = {"class_path": LIGER}
    if alpha > 0:
        chosen[NEFTUNE] = {"class_path": NEFTUNE, "init_args": {"alpha": alpha}}
    # The panel's patches keep their places in the list, new ones go last; patches it does not show stay.
    patches = []
    for entry in model_args.get("patches") or []:
        class_path = entry.get("class_path") if isinstance(entry, dict) else None
        if class_path not in PANEL_PATCHES:
            patches.append(entry)
        elif class_path in chosen:
            patches.append(chosen.pop(class_path))
    patches += chosen.values()
    _set(model_args, "patches", patches, [])
    _set(model_args, "gradient_checkpointing", bool(form.gradient_checkpointing), False)


def write_optimizer(old: dict[str, Any], form: Any) -> dict[str, Any]:
    """The optimizer section for the form's optimizer choice and learning rate (GaLore/BAdam with their panels)."""
    name = (form.optimizer or "AdamW").strip()
    class_path = OPTIMIZERS.get(name, name)
    lr = parse_number("learning rate", form.learning_rate, float, 0)
    kept = dict(old.get("init_args") or {}) if old.get("class_path", OPTIMIZERS["AdamW"]) == class_path else {}
    if name in ("GaLore", "BAdam") and form.method != "Full":
        raise LitFactoryError(f"optimizer {name}: trains every parameter, not a {form.method} adapter. Fix: set the "
                              "fine-tuning method to Full (or pick AdamW).")
    if name == "GaLore":
        targets = [part.strip() for part in str(form.galore_target_modules or "all").split(",") if part.strip()]
        kept.update(lr=lr, rank=parse_number("GaLore rank", form.galore_rank, int, 1),
                    update_interval=parse_number("GaLore update interval", form.galore_update_interval, int, 1),
                    scale=parse_number("GaLore scale", form.galore_scale, float, 0),
                    target_modules="all" if targets in ([], ["all"]) else targets)
    elif name == "BAdam":
        inner = dict(kept.get("optimizer") or {"class_path": OPTIMIZERS["AdamW"]})
        inner["init_args"] = {**(inner.get("init_args") or {}), "lr": lr}
        orders = literal_choices(OPTIMIZERS["BAdam"], "order")
        if form.badam_order not in orders:
            raise LitFactoryError(f"BAdam order: {form.badam_order!r} is unknown. Fix: pick one of {orders}.")
        kept.update(optimizer=inner, switch_every=parse_number("BAdam switch every", form.badam_switch_every, int, 1),
                    order=form.badam_order)
    else:
        if "." not in class_path:
            raise LitFactoryError(f"optimizer: {name!r} is unknown. Fix: pick one of {list(OPTIMIZERS)} or give a "
                                  "class path (torch.optim.SGD).")
        kept["lr"] = lr
    return {"class_path": class_path, "init_args": kept}


def write_stage_panel(stage_args: dict[str, Any], form: Any) -> None:
    """The current stage's typed fields into ``model.init_args`` (over what the options YAML says)."""
    for arg in STAGE_PANELS.get(form.stage, ()):
        value, label = form.panel(panel_field(form.stage, arg)), f"{form.stage} {arg}"
        kind = stage_arg_kind(form.stage, arg)
        if kind == "choice":
            choices = stage_arg_choices(form.stage, arg)
            if value not in choices:
                raise LitFactoryError(f"{label}: {value!r} is unknown. Fix: pick one of {choices}.")
        elif kind == "bool":
            value = bool(value)
        elif kind in ("int", "float"):
            value = parse_number(label, value, int if kind == "int" else float, 0)
        elif kind == "optional_float":
            value = None if value is None or str(value).strip() == "" else parse_number(label, value, float, 0)
        else:
            value = str(value or "").strip()
            if not value:
                raise LitFactoryError(f"{label}: empty. Fix: fill it in (e.g. the reward-model run's folder).")
        stage_args[arg] = value


def write_trainer(trainer: dict[str, Any], form: Any) -> None:
    devices = str(form.devices or "auto").strip()
    if devices != "auto" and not all(part.strip().lstrip("-").isdigit() for part in devices.split(",")):
        raise LitFactoryError(f"devices: {devices!r} is not auto, a count or a list of ids. Fix: e.g. auto, 2 or 0,1.")
    # As typed (Lightning reads "2" as two devices, "0,1" as ids): a string resolves alike from YAML and the command
    if str(trainer.get("devices", "auto")) != devices:
        trainer["devices"] = devices
    if form.strategy not in strategies():
        raise LitFactoryError(f"strategy: {form.strategy!r} is unknown. Fix: pick one of {strategies()}.")
    _set(trainer, "strategy", form.strategy, "auto")
    if form.logger not in LOGGERS:
        raise LitFactoryError(f"logger: {form.logger!r} is unknown. Fix: pick one of {list(LOGGERS)}.")
