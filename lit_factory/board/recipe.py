"""Recipe assembly for the board: a recipe from ``recipes/`` plus the Train tab's fields -> the recipe a run uses.

Recipes are the single source of defaults: the form starts from a recipe's values, and the assembled recipe is
that recipe with the fields the form shows overwritten, so options the form does not show (precision details,
an inline model config, gradient clipping) pass through unchanged. The result is plain YAML that
``lit-factory fit --config`` runs as is.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from lit_factory.errors import LitFactoryError
from lit_factory.shipped import list_recipes as shipped_recipes
from lit_factory.shipped import resolve_shipped_path, shipped_dir

RECIPES_DIR = shipped_dir("recipes")
# Stage arguments every stage shares; the others are the stage's own options (shown as YAML in the form).
COMMON_STAGE_ARGS = ("model", "finetuning", "optimizer", "lr_schedule", "warmup_steps")
# Finetuning arguments with their own fields in the form; the rest go to the method's options YAML.
FORM_METHOD_ARGS = {"LoRA": ("r", "alpha", "dropout", "target_modules"), "Freeze": ("trainable_layers", "extra_modules")}
PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
LR_SCHEDULES = ["cosine", "linear", "constant"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class TrainForm:
    """The Train tab's fields, in the order the page and its API pass them."""

    model_path: str = ""
    tokenizer: str = ""
    template: str = "auto"
    stage: str = "SFT"
    method: str = "Full"
    lora_r: float = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all"
    freeze_layers: float = 2
    freeze_extra: str = ""
    method_options: str = ""
    stage_options: str = ""
    dataset_dir: str = "data"
    datasets: list[str] = None  # type: ignore[assignment]
    learning_rate: str = "1e-4"
    lr_schedule: str = "cosine"
    warmup_steps: str = "0"
    max_epochs: str = ""
    max_steps: str = ""
    batch_size: float = 4
    grad_accum: float = 1
    cutoff_len: float = 1024
    val_size: str = "0"
    max_samples: str = ""
    precision: str = "32-true"
    log_every_n_steps: float = 10
    output_dir: str = "runs/board"
    run_name: str = ""

    def __post_init__(self) -> None:
        self.datasets = list(self.datasets or [])


FORM_FIELDS = [f.name for f in fields(TrainForm)]


def list_recipes() -> list[str]:
    """Base recipes under ``recipes/``, as paths relative to it (``quickstart.yaml``, ``sft/lora.yaml``...); not the
    method overlays (``methods/*``), which hold only a method's settings and would blank the form."""
    return shipped_recipes(include_methods=False)


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe ``recipes/<name>`` (or a path to any recipe YAML) as a dict."""
    import yaml

    path = Path(name) if Path(name).is_file() else RECIPES_DIR / name
    if not path.is_file():
        raise LitFactoryError(f"recipe {name!r}: no such file in {RECIPES_DIR}. Fix: pick one of {list_recipes()}.")
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        raise LitFactoryError(f"{path}: not a lit-factory recipe (no `model` section). Fix: pick a file from recipes/.")
    return recipe


def available_stages() -> list[str]:
    """Stage class names registered in ``lit_factory.stages`` (read at run time, so new stages appear)."""
    from lit_factory import stages

    return [name for name in stages._STAGES if name != "Stage"]


def available_methods() -> list[str]:
    """Fine-tuning methods exported by ``lit_factory.model`` (every ``Finetuning`` subclass but the base)."""
    import lit_factory.model as model_pkg
    from lit_factory.model.adapters import Finetuning

    methods = []
    for name in getattr(model_pkg, "__all__", dir(model_pkg)):
        value = getattr(model_pkg, name, None)
        if inspect.isclass(value) and issubclass(value, Finetuning) and value is not Finetuning:
            methods.append(name)
    return methods


def available_templates() -> list[str]:
    """``auto`` plus the chat templates in ``templates/``."""
    from lit_factory.data.templates import available_templates as names

    return ["auto", *names()]


def dataset_names(dataset_dir: str) -> list[str]:
    """Entry names of ``<dataset_dir>/dataset_info.json``."""
    from lit_factory.data.spec import read_dataset_info

    return list(read_dataset_info(dataset_dir))


def method_defaults(method: str) -> dict[str, Any]:
    """The constructor defaults of a fine-tuning method (what it does when the recipe sets nothing)."""
    import lit_factory.model as model_pkg

    cls = getattr(model_pkg, method, None)
    if cls is None:
        raise LitFactoryError(f"fine-tuning method {method!r} is unknown. Fix: pick one of {available_methods()}.")
    return {
        name: param.default for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and param.default is not inspect.Parameter.empty
    }


def _class_name(section: Any, default: str) -> str:
    if isinstance(section, dict) and section.get("class_path"):
        return str(section["class_path"]).rsplit(".", 1)[-1]
    return default


def dump_options(options: dict[str, Any]) -> str:
    """Options as the ``key: value`` YAML lines the form's options fields hold."""
    import yaml

    return yaml.safe_dump(options, sort_keys=False).strip() if options else ""


def form_from_recipe(recipe: dict[str, Any], run_name: str = "") -> TrainForm:
    """The Train tab's fields filled with a recipe's values (fields the recipe leaves out keep the form's own)."""
    stage_args = recipe["model"].get("init_args", {}) or {}
    model_args = stage_args.get("model", {}) or {}
    finetuning = stage_args.get("finetuning") or {}
    method = _class_name(finetuning, "Full")
    method_args = {**method_defaults(method), **(finetuning.get("init_args") or {})}
    optimizer_args = (stage_args.get("optimizer") or {}).get("init_args", {}) or {}
    data_args = (recipe.get("data") or {}).get("init_args", {}) or {}
    trainer = recipe.get("trainer") or {}
    logger = trainer.get("logger") or {}
    logger_args = logger.get("init_args", {}) if isinstance(logger, dict) else {}
    form = TrainForm(
        model_path=model_args.get("path") or "",
        tokenizer=model_args.get("tokenizer") or "",
        template=str(data_args.get("template", "auto")),
        stage=_class_name(recipe["model"], "SFT"),
        method=method,
        method_options=dump_options(
            {k: v for k, v in method_args.items() if k not in FORM_METHOD_ARGS.get(method, ())}
        ),
        stage_options=dump_options({k: v for k, v in stage_args.items() if k not in COMMON_STAGE_ARGS}),
        dataset_dir=str(data_args.get("dataset_dir", "data")),
        datasets=_as_list(data_args.get("dataset", [])),
        learning_rate=str(optimizer_args.get("lr", "1e-3")),
        lr_schedule=str(stage_args.get("lr_schedule", "cosine")),
        warmup_steps=str(stage_args.get("warmup_steps", 0)),
        max_epochs=_blank_if_none(trainer.get("max_epochs")),
        max_steps=_blank_if_none(None if trainer.get("max_steps", -1) == -1 else trainer.get("max_steps")),
        batch_size=data_args.get("batch_size", 4),
        grad_accum=trainer.get("accumulate_grad_batches", 1),
        cutoff_len=data_args.get("cutoff_len", 1024),
        val_size=str(data_args.get("val_size", 0)),
        max_samples=_blank_if_none(data_args.get("max_samples")),
        precision=str(trainer.get("precision", "32-true")),
        log_every_n_steps=trainer.get("log_every_n_steps", 50),
        output_dir=str(Path(logger_args.get("save_dir", "runs")) / logger_args.get("name", "board")),
        run_name=run_name,
    )
    if method == "LoRA":
        form.lora_r, form.lora_alpha, form.lora_dropout = method_args["r"], method_args["alpha"], method_args["dropout"]
        targets = method_args["target_modules"]
        form.lora_targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
    if method == "Freeze":
        form.freeze_layers = method_args["trainable_layers"]
        form.freeze_extra = ", ".join(method_args.get("extra_modules") or [])
    return form


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value or []]


def _blank_if_none(value: Any) -> str:
    return "" if value is None else str(value)


# ---- reading the form's text fields -------------------------------------------------------------------------------
def parse_number(label: str, text: Any, kind: type = float, minimum: Optional[float] = None) -> Any:
    """A form field as ``kind`` (``int`` or ``float``), at least ``minimum``; a one-line error naming ``label``."""
    try:
        value = kind(float(str(text).strip())) if kind is int else kind(str(text).strip())
    except (TypeError, ValueError):
        raise LitFactoryError(f"{label}: {text!r} is not a number. Fix: type a number such as 3e-4.") from None
    if kind is int and float(str(text).strip()) != value:
        raise LitFactoryError(f"{label}: {text!r} is not a whole number. Fix: type an integer.")
    if minimum is not None and value < minimum:
        raise LitFactoryError(f"{label}: {value} is below {minimum}. Fix: type a larger value.")
    return value


def parse_optional_int(label: str, text: Any, minimum: int = 1) -> Optional[int]:
    """An optional whole-number field: ``None`` when left empty."""
    return None if text is None or str(text).strip() == "" else parse_number(label, text, int, minimum)


def _options(label: str, text: str) -> dict[str, Any]:
    import yaml

    if not (text or "").strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LitFactoryError(f"{label}: not valid YAML ({str(err).splitlines()[0]}). Fix: write `key: value` lines.") from None
    if not isinstance(value, dict):
        raise LitFactoryError(f"{label}: must be `key: value` lines (a mapping), got {type(value).__name__}.")
    return value


def in_workdir(workdir: str | Path, path: str) -> Path:
    """A path the form names, as the run (started in ``workdir``) will read it: relative to ``workdir``, or the
    copy shipped with lit-factory (``lit_factory/assets/demo``...) when the workdir has none."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return given
    local = Path(workdir) / given
    return local if local.exists() else Path(resolve_shipped_path(str(given)))


def _names(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _check_model_path(path: str, workdir: Path) -> None:
    if in_workdir(workdir, path).is_dir():
        return
    if path.startswith((".", "/", "~")) or not HUB_ID.match(path):
        raise LitFactoryError(
            f"model path: {path!r} is not a folder and not a hub id (org/name). Fix: give the folder of a "
            "Hugging Face model or its hub id."
        )


def assemble_recipe(base: dict[str, Any], form: TrainForm, workdir: str | Path = ".") -> dict[str, Any]:
    """The recipe a run uses: ``base`` with the form's fields written in. Raises ``LitFactoryError`` on bad input.

    ``workdir`` is the folder the run starts in (relative paths in the recipe are relative to it).
    """
    workdir = Path(workdir)
    recipe = copy.deepcopy(base)
    stages, methods = available_stages(), available_methods()
    if form.stage not in stages:
        raise LitFactoryError(f"stage: {form.stage!r} is unknown. Fix: pick one of {stages}.")
    if form.method not in methods:
        raise LitFactoryError(f"fine-tuning method: {form.method!r} is unknown. Fix: pick one of {methods}.")

    stage_section = recipe["model"]
    stage_section["class_path"] = f"lit_factory.stages.{form.stage}"
    old_args = stage_section.get("init_args") or {}
    stage_args = {k: v for k, v in old_args.items() if k in COMMON_STAGE_ARGS}
    stage_args.update(_options("stage options", form.stage_options))

    model_args = dict(old_args.get("model") or {})
    model_path, tokenizer = (form.model_path or "").strip(), (form.tokenizer or "").strip()
    if model_path:
        _check_model_path(model_path, workdir)
        model_args.pop("config", None)
        model_args["path"] = model_path
    elif model_args.get("config"):
        model_args.pop("path", None)  # the recipe's inline config builds a random model (tests, quickstart)
    else:
        raise LitFactoryError("model path: empty. Fix: give the folder or hub id of the model to fine-tune.")
    if tokenizer:
        model_args["tokenizer"] = tokenizer
    else:
        model_args.pop("tokenizer", None)
        if "config" in model_args:
            raise LitFactoryError("tokenizer: a model built from the recipe's inline config needs a tokenizer path.")
    stage_args["model"] = model_args

    method_args = _options("method options", form.method_options)
    if form.method == "LoRA":
        targets = _names(form.lora_targets) or ["all"]
        method_args.update(
            r=parse_number("LoRA rank", form.lora_r, int, 1),
            alpha=parse_number("LoRA alpha", form.lora_alpha, float, 0),
            dropout=parse_number("LoRA dropout", form.lora_dropout, float, 0),
            target_modules=targets[0] if targets == ["all"] else targets,
        )
    elif form.method == "Freeze":
        method_args.update(trainable_layers=parse_number("trainable layers", form.freeze_layers, int, 1),
                           extra_modules=_names(form.freeze_extra))
    known = method_defaults(form.method)
    unknown = sorted(set(method_args) - set(known))
    if unknown:
        raise LitFactoryError(
            f"method options: {form.method} has no option(s) {unknown}. Fix: use some of {sorted(known)}."
        )
    stage_args["finetuning"] = {"class_path": f"lit_factory.model.{form.method}"}
    if method_args:
        stage_args["finetuning"]["init_args"] = method_args

    optimizer = dict(stage_args.get("optimizer") or {"class_path": "torch.optim.AdamW"})
    optimizer["init_args"] = {**(optimizer.get("init_args") or {}),
                              "lr": parse_number("learning rate", form.learning_rate, float, 0)}
    stage_args["optimizer"] = optimizer
    if form.lr_schedule not in LR_SCHEDULES:
        raise LitFactoryError(f"LR schedule: {form.lr_schedule!r} is unknown. Fix: pick one of {LR_SCHEDULES}.")
    stage_args["lr_schedule"] = form.lr_schedule
    warmup = parse_number("warmup steps", form.warmup_steps, float, 0)
    stage_args["warmup_steps"] = int(warmup) if warmup >= 1 and warmup == int(warmup) else warmup
    stage_section["init_args"] = stage_args

    recipe["data"] = _data_section(recipe.get("data") or {}, form, workdir)
    recipe["trainer"] = _trainer_section(recipe.get("trainer") or {}, form)
    return recipe


def _data_section(data: dict[str, Any], form: TrainForm, workdir: Path) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data.setdefault("class_path", "lit_factory.data.DataModule")
    args = dict(data.get("init_args") or {})
    dataset_dir = (form.dataset_dir or "").strip()
    if not dataset_dir:
        raise LitFactoryError("dataset folder: empty. Fix: give the folder that holds dataset_info.json.")
    folder = in_workdir(workdir, dataset_dir)
    known = dataset_names(str(folder))
    chosen = list(form.datasets or [])
    if not chosen:
        raise LitFactoryError(f"datasets: none chosen. Fix: pick at least one of {known}.")
    missing = [name for name in chosen if name not in known]
    if missing:
        raise LitFactoryError(
            f"datasets: {missing} not in {folder / 'dataset_info.json'}. Fix: pick from {known}."
        )
    templates = available_templates()
    template = (form.template or "auto").strip()
    if template not in templates and not Path(template).is_file():
        raise LitFactoryError(f"template: {template!r} is unknown. Fix: pick one of {templates}.")
    args.update(
        dataset_dir=dataset_dir,
        dataset=chosen,
        template=template,
        cutoff_len=parse_number("cutoff length", form.cutoff_len, int, 1),
        batch_size=parse_number("batch size", form.batch_size, int, 1),
    )
    val_size = parse_number("validation size", form.val_size or 0, float, 0)
    args["val_size"] = int(val_size) if val_size >= 1 or val_size == 0 else val_size
    max_samples = parse_optional_int("max samples", form.max_samples)
    if max_samples is None:
        args.pop("max_samples", None)
    else:
        args["max_samples"] = max_samples
    data["init_args"] = args
    return data


def _trainer_section(trainer: dict[str, Any], form: TrainForm) -> dict[str, Any]:
    trainer = copy.deepcopy(trainer)
    max_epochs = parse_optional_int("epochs", form.max_epochs)
    max_steps = parse_optional_int("max steps", form.max_steps)
    if max_epochs is None and max_steps is None:
        raise LitFactoryError("epochs / max steps: both empty. Fix: set how long to train (one of them or both).")
    trainer.pop("max_epochs", None)
    trainer.pop("max_steps", None)
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
    if max_steps is not None:
        trainer["max_steps"] = max_steps
    if form.precision not in PRECISIONS:
        raise LitFactoryError(f"precision: {form.precision!r} is unknown. Fix: pick one of {PRECISIONS}.")
    trainer["precision"] = form.precision
    trainer["accumulate_grad_batches"] = parse_number("gradient accumulation", form.grad_accum, int, 1)
    trainer["log_every_n_steps"] = parse_number("log every n steps", form.log_every_n_steps, int, 1)
    run_name = (form.run_name or "").strip()
    output_dir = Path((form.output_dir or "").strip() or ".")
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise LitFactoryError(f"run name: {run_name!r} must be a non-empty folder name. Fix: e.g. board-1.")
    if not str(form.output_dir or "").strip():
        raise LitFactoryError("output folder: empty. Fix: give a folder for runs, e.g. runs/board.")
    # The run's folder is exactly <output_dir>/<run_name>: the board knows where events and checkpoints land.
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(output_dir.parent), "name": output_dir.name, "version": run_name},
    }
    log_dir = str(output_dir / run_name)
    callbacks = [c for c in _as_callbacks(trainer.get("callbacks"))
                 if _class_name(c, "") not in ("ProgressFile", "StopCheckpoint")]
    callbacks += [
        # The board's progress bar reads this file (step, total, timing) while the run trains.
        {"class_path": "lit_factory.board.progress.ProgressFile"},
        # Stop sends SIGINT; this then saves checkpoints/last.ckpt, which Resume continues from with
        # `--ckpt_path last` (Lightning looks for last*.ckpt beside the run's ModelCheckpoint).
        {"class_path": "lit_factory.board.progress.StopCheckpoint",
         "init_args": {"dirpath": f"{log_dir}/checkpoints"}},
    ]
    # Besides the stop checkpoint, the regular ones (a kill or OOM keeps the newest), unless the recipe has its own.
    if trainer.get("enable_checkpointing", True) is not False and not any(
            _class_name(c, "") in ("ModelCheckpoint", "PeriodicCheckpoint") for c in callbacks):
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"dirpath": f"{log_dir}/checkpoints", "save_last": True,
                                        "enable_version_counter": False}})  # Resume updates last.ckpt, not -v1
    trainer["callbacks"] = callbacks
    return trainer


def _as_callbacks(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def run_dir(recipe: dict[str, Any]) -> Path:
    """The folder a recipe assembled here writes its run to (``<save_dir>/<name>/<version>``)."""
    args = recipe["trainer"]["logger"]["init_args"]
    return Path(args["save_dir"]) / args["name"] / str(args["version"])


def recipe_yaml(recipe: dict[str, Any]) -> str:
    """The recipe as the YAML file the run reads."""
    import yaml

    header = "# lit-factory recipe written by the board; repeat the run with: lit-factory fit --config <this file>\n"
    return header + yaml.safe_dump(json.loads(json.dumps(recipe)), sort_keys=False, allow_unicode=True)


def form_values(form: TrainForm) -> list[Any]:
    """The form as the list of values the page's fields hold, in ``FORM_FIELDS`` order."""
    return [asdict(form)[name] for name in FORM_FIELDS]
