"""The Train tab's form and the recipes it starts from: ``TrainForm`` (every field, in the page's order), the
shipped recipes to pick, and :func:`form_from_recipe`, which fills the form from a recipe.

Recipes are the single source of defaults: the form starts from a recipe's values (or, where the recipe says
nothing, the class signature's defaults), and ``assemble.assemble_recipe`` writes the form back over that recipe,
so options the form does not show (precision details, an inline model config, gradient clipping) pass through.
Recipes are read and checked by the trainer CLI's own parser (:mod:`lit_factory.recipe`), so the board accepts what
`lit-factory fit` accepts: any ``Stage`` subclass by its import path, not only the stages lit-factory ships.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from lit_factory.board import panels
from lit_factory.board.fields import as_list, blank_if_none, dump_options
from lit_factory.errors import LitFactoryError
from lit_factory.recipe import ParsedRecipe, import_class, parse_recipe, read_recipe
from lit_factory.shipped import list_recipes as shipped_recipes
from lit_factory.shipped import shipped_dir

if TYPE_CHECKING:
    from lit_factory.board.workspace import Workspace

RECIPES_DIR = shipped_dir("recipes")
# Stage arguments every stage shares; the others are the stage's own options (typed panels, the rest as YAML).
COMMON_STAGE_ARGS = ("model", "finetuning", "optimizer", "lr_schedule", "warmup_steps")
# Finetuning arguments with their own fields in the form; the rest go to the method's options YAML.
FORM_METHOD_ARGS = {"LoRA": ("r", "alpha", "dropout", "target_modules"), "Freeze": ("trainable_layers", "extra_modules")}
PRECISIONS = ["32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
LR_SCHEDULES = ["cosine", "linear", "constant"]


@dataclass
class TrainForm:
    """The Train tab's fields, in the order the page and its API pass them."""

    model_path: str = ""
    tokenizer: str = ""
    template: str = "auto"
    adapter: str = ""
    quantization: str = panels.NONE
    attn_implementation: str = "sdpa"
    rope_scaling: str = panels.NONE
    shift_attn: bool = False
    liger_kernel: bool = False
    neftune_alpha: float = 0.0
    gradient_checkpointing: bool = False
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
    packing: bool = False
    optimizer: str = "AdamW"
    learning_rate: str = "1e-4"
    galore_rank: float = 16
    galore_update_interval: float = 200
    galore_scale: float = 2.0
    galore_target_modules: str = "all"
    badam_switch_every: float = 50
    badam_order: str = "ascending"
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
    devices: str = "auto"
    strategy: str = "auto"
    logger: str = "tensorboard"
    output_dir: str = "runs/board"
    run_name: str = ""
    # The preference stages' typed panels (``panels.STAGE_PANELS``): ``dpo_beta``, ``kto_desirable_weight``,
    # ``ppo_reward_model``...; filled from the recipe or the stage's signature by ``form_from_recipe``.
    stage_panels: dict[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.datasets = list(self.datasets or [])
        self.stage_panels = dict(self.stage_panels or {})

    def panel(self, name: str) -> Any:
        """The value of a stage panel field (``dpo_beta``)."""
        return self.stage_panels.get(name)


# The page passes the stage panels as fields of their own, after the others.
FORM_FIELDS = [f.name for f in fields(TrainForm) if f.name != "stage_panels"] + panels.STAGE_FIELDS


def list_recipes() -> list[str]:
    """Base recipes under ``recipes/``, as paths relative to it (``quickstart.yaml``, ``sft/lora.yaml``...); not the
    method overlays (``methods/*``), which hold only a method's settings and would blank the form."""
    return shipped_recipes(include_methods=False)


def is_shipped_recipe(name: str) -> bool:
    """Whether ``name`` names a recipe under the shipped ``recipes/`` (relative, no ``..``)."""
    relative = Path(name)
    return not relative.is_absolute() and ".." not in relative.parts and (RECIPES_DIR / relative).is_file()


def load_recipe(name: str, workspace: Optional["Workspace"] = None) -> dict[str, Any]:
    """The shipped recipe ``recipes/<name>``, or a recipe YAML at a path (inside ``workspace`` when given: the
    board's saved arguments), as a dict, once the trainer CLI's parser has accepted it."""
    if is_shipped_recipe(name):
        path = RECIPES_DIR / name
    elif workspace is not None:
        path = workspace.path(name, "recipe", "read")
    else:
        path = Path(name)
    if not path.is_file():
        raise LitFactoryError(f"recipe {name!r}: no such file in {RECIPES_DIR}. Fix: pick one of {list_recipes()}.")
    recipe = read_recipe(path)
    parse_recipe(recipe, source=str(path))  # what `lit-factory fit` would refuse, refused on loading
    return recipe


def available_stages() -> list[str]:
    """The stages the form's dropdown offers: those lit-factory ships (a recipe may name any other by its path)."""
    from lit_factory import stages

    return stages.shipped_stages()


def stage_name(class_path: str) -> str:
    """How the form names the stage of ``model.class_path``: ``DPO`` for a stage lit-factory ships, the import path
    for any other (``mypkg.MyDPO``, a subclass of one of ours included)."""
    from lit_factory import stages

    short = class_path.rsplit(".", 1)[-1]
    if short in available_stages() and import_class(class_path) is getattr(stages, short):
        return short
    return class_path


def stage_class_path(stage: str) -> str:
    """The ``model.class_path`` of the form's stage: a shipped stage's name, or the import path of any ``Stage``
    subclass. A one-line error naming the field otherwise."""
    from importlib import import_module

    from lit_factory.stages.base import Stage

    stage = (stage or "").strip()
    known = available_stages()
    if stage in known:
        return f"lit_factory.stages.{stage}"
    fix = f"Fix: pick one of {known}, or give the import path of a Stage subclass (mypkg.MyDPO)."
    module, _, name = stage.rpartition(".")
    if not module:
        raise LitFactoryError(f"stage: {stage!r} is unknown. {fix}")
    try:
        cls = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise LitFactoryError(f"stage: {stage!r} cannot be imported ({err}). {fix}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise LitFactoryError(f"stage: {stage!r} is not a subclass of lit_factory.stages.Stage. {fix}")
    return stage


def stage_class(stage: str) -> type:
    """The stage class the form's stage field names (``SFT`` or ``mypkg.MyDPO``)."""
    return import_class(stage_class_path(stage))


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


def form_from_recipe(recipe: dict[str, Any] | ParsedRecipe, run_name: str = "") -> TrainForm:
    """The Train tab's fields filled with a recipe's values (fields the recipe leaves out keep the form's own).
    The recipe is read by the trainer CLI's parser (so its stage may be any ``Stage`` subclass); the fields take
    the values the recipe writes, so the form shows what the recipe says."""
    parsed = recipe if isinstance(recipe, ParsedRecipe) else parse_recipe(recipe)
    recipe = parsed.raw
    stage_args = recipe["model"].get("init_args", {}) or {}
    model_args = stage_args.get("model", {}) or {}
    finetuning = stage_args.get("finetuning") or {}
    method = _class_name(finetuning, "Full")
    method_args = {**method_defaults(method), **(finetuning.get("init_args") or {})}
    data_args = (recipe.get("data") or {}).get("init_args", {}) or {}
    trainer = recipe.get("trainer") or {}
    logger = trainer.get("logger") or {}
    logger_args = logger.get("init_args", {}) if isinstance(logger, dict) else {}
    stage = stage_name(parsed.config.model.class_path)
    typed = panels.STAGE_PANELS.get(stage, ())
    form = TrainForm(
        model_path=model_args.get("path") or "",
        tokenizer=model_args.get("tokenizer") or "",
        template=str(data_args.get("template", "auto")),
        **panels.read_model_options(model_args),
        stage=stage,
        method=method,
        method_options=dump_options(
            {k: v for k, v in method_args.items() if k not in FORM_METHOD_ARGS.get(method, ())}
        ),
        stage_options=dump_options({k: v for k, v in stage_args.items()
                                    if k not in COMMON_STAGE_ARGS and k not in typed}),
        dataset_dir=str(data_args.get("dataset_dir", "data")),
        datasets=as_list(data_args.get("dataset", [])),
        packing=bool(data_args.get("packing", False)),
        **panels.read_optimizer(stage_args.get("optimizer") or {}),
        lr_schedule=str(stage_args.get("lr_schedule", "cosine")),
        warmup_steps=str(stage_args.get("warmup_steps", 0)),
        max_epochs=blank_if_none(trainer.get("max_epochs")),
        max_steps=blank_if_none(None if trainer.get("max_steps", -1) == -1 else trainer.get("max_steps")),
        batch_size=data_args.get("batch_size", 4),
        grad_accum=trainer.get("accumulate_grad_batches", 1),
        cutoff_len=data_args.get("cutoff_len", 1024),
        val_size=str(data_args.get("val_size", 0)),
        max_samples=blank_if_none(data_args.get("max_samples")),
        precision=str(trainer.get("precision", "32-true")),
        log_every_n_steps=trainer.get("log_every_n_steps", 50),
        **panels.read_trainer(trainer),
        output_dir=str(Path(logger_args.get("save_dir", "runs")) / logger_args.get("name", "board")),
        run_name=run_name,
        stage_panels=panels.read_stage_panels(stage, stage_args),
    )
    if method == "LoRA":
        form.lora_r, form.lora_alpha, form.lora_dropout = method_args["r"], method_args["alpha"], method_args["dropout"]
        targets = method_args["target_modules"]
        form.lora_targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
    if method == "Freeze":
        form.freeze_layers = method_args["trainable_layers"]
        form.freeze_extra = ", ".join(method_args.get("extra_modules") or [])
    return form


def form_values(form: TrainForm) -> list[Any]:
    """The form as the list of values the page's fields hold, in ``FORM_FIELDS`` order."""
    values = asdict(form)
    return [form.stage_panels[name] if name in form.stage_panels else values[name] for name in FORM_FIELDS]


def read_form(values: Any) -> TrainForm:
    """The form from the page's values (``FORM_FIELDS`` order)."""
    given = dict(zip(FORM_FIELDS, values))
    typed = {name: given.pop(name) for name in panels.STAGE_FIELDS if name in given}
    return TrainForm(**given, stage_panels=typed)


def hub_ids_in_recipes() -> list[str]:
    """The hub ids the shipped recipes train (the model picker offers them beside the workspace's folders)."""
    from lit_factory.board.workspace import HUB_ID

    found = []
    for name in list_recipes():
        try:  # the model path as written: no parse needed to list it
            path = read_recipe(RECIPES_DIR / name)["model"]["init_args"]["model"]["path"]
        except (LitFactoryError, KeyError, TypeError):
            continue
        if isinstance(path, str) and HUB_ID.match(path) and not path.startswith("runs/") and path not in found:
            found.append(path)
    return found
