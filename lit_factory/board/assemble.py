"""Recipe assembly for the board: a base recipe plus the Train tab's fields -> the recipe a run uses.

The assembled recipe is the base with the fields the form shows written over it (``recipe.form_from_recipe`` is
the way back), plain YAML that ``lit-factory fit --config`` runs as is. Every path it names is checked against
the board's workspace (``workspace.check_recipe_paths``), including paths that came in through the free YAML
options or the base recipe.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lit_factory.board import panels
from lit_factory.board.fields import names, parse_number, parse_optional_int, parse_options
from lit_factory.board.recipe import (
    COMMON_STAGE_ARGS, LR_SCHEDULES, PRECISIONS, TrainForm, _class_name, available_methods, available_templates,
    dataset_names, method_defaults, stage_class_path,
)
from lit_factory.board.workspace import HUB_ID, Workspace, check_recipe_paths
from lit_factory.errors import LitFactoryError
from lit_factory.recipe import parse_recipe

RECIPE_HEADER = "# lit-factory recipe written by the board; repeat the run with: lit-factory fit --config <this file>\n"


def as_workspace(workdir: str | Path | Workspace) -> Workspace:
    return workdir if isinstance(workdir, Workspace) else Workspace(workdir)


def _check_model_path(path: str, workspace: Workspace) -> None:
    source = workspace.model_source(path, "model path")
    if Path(source).is_dir():
        return
    if not HUB_ID.match(source):
        raise LitFactoryError(
            f"model path: {path!r} is not a folder and not a hub id (org/name). Fix: give the folder of a "
            "Hugging Face model or its hub id."
        )


def assemble_recipe(base: dict[str, Any], form: TrainForm, workdir: str | Path | Workspace = ".") -> dict[str, Any]:
    """The recipe a run uses: ``base`` with the form's fields written in. Raises ``LitFactoryError`` on bad input.

    ``workdir`` is the board's workspace: the run starts in it, and every path must lie in it.
    """
    workspace = as_workspace(workdir)
    recipe = copy.deepcopy(base)
    class_path, methods = stage_class_path(form.stage), available_methods()
    if form.method not in methods:
        raise LitFactoryError(f"fine-tuning method: {form.method!r} is unknown. Fix: pick one of {methods}.")

    stage_section = recipe["model"]
    stage_section["class_path"] = class_path
    old_args = stage_section.get("init_args") or {}
    stage_args = {k: v for k, v in old_args.items() if k in COMMON_STAGE_ARGS}
    stage_args.update(parse_options("stage options", form.stage_options))
    panels.write_stage_panel(stage_args, form)

    model_args = dict(old_args.get("model") or {})
    model_path, tokenizer = (form.model_path or "").strip(), (form.tokenizer or "").strip()
    if model_path:
        _check_model_path(model_path, workspace)
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
    panels.write_model_options(model_args, form, form.method)
    stage_args["model"] = model_args

    method_args = parse_options("method options", form.method_options)
    if form.method == "LoRA":
        targets = names(form.lora_targets) or ["all"]
        method_args.update(
            r=parse_number("LoRA rank", form.lora_r, int, 1),
            alpha=parse_number("LoRA alpha", form.lora_alpha, float, 0),
            dropout=parse_number("LoRA dropout", form.lora_dropout, float, 0),
            target_modules=targets[0] if targets == ["all"] else targets,
        )
    elif form.method == "Freeze":
        method_args.update(trainable_layers=parse_number("trainable layers", form.freeze_layers, int, 1),
                           extra_modules=names(form.freeze_extra))
    known = method_defaults(form.method)
    unknown = sorted(set(method_args) - set(known))
    if unknown:
        raise LitFactoryError(
            f"method options: {form.method} has no option(s) {unknown}. Fix: use some of {sorted(known)}."
        )
    stage_args["finetuning"] = {"class_path": f"lit_factory.model.{form.method}"}
    if method_args:
        stage_args["finetuning"]["init_args"] = method_args

    stage_args["optimizer"] = panels.write_optimizer(stage_args.get("optimizer") or {}, form)
    if form.lr_schedule not in LR_SCHEDULES:
        raise LitFactoryError(f"LR schedule: {form.lr_schedule!r} is unknown. Fix: pick one of {LR_SCHEDULES}.")
    stage_args["lr_schedule"] = form.lr_schedule
    warmup = parse_number("warmup steps", form.warmup_steps, float, 0)
    stage_args["warmup_steps"] = int(warmup) if warmup >= 1 and warmup == int(warmup) else warmup
    stage_section["init_args"] = stage_args

    recipe["data"] = _data_section(recipe.get("data") or {}, form, workspace)
    recipe["trainer"] = _trainer_section(recipe.get("trainer") or {}, form, workspace)
    check_recipe_paths(recipe, workspace)
    # What the form's checks let through (a key in the options YAML, a value of the wrong type) is refused here
    # as `lit-factory fit` would refuse it, before a run starts.
    parse_recipe(recipe, source="the form's recipe")
    return recipe


def _data_section(data: dict[str, Any], form: TrainForm, workspace: Workspace) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data.setdefault("class_path", "lit_factory.data.DataModule")
    args = dict(data.get("init_args") or {})
    dataset_dir = (form.dataset_dir or "").strip()
    if not dataset_dir:
        raise LitFactoryError("dataset folder: empty. Fix: give the folder that holds dataset_info.json.")
    folder = workspace.path(dataset_dir, "dataset folder", "read")
    known = dataset_names(str(folder))
    chosen = list(form.datasets or [])
    if not chosen:
        raise LitFactoryError(f"datasets: none chosen. Fix: pick at least one of {known}.")
    missing = [name for name in chosen if name not in known]
    if missing:
        raise LitFactoryError(
            f"datasets: {missing} not in {folder / 'dataset_info.json'}. Fix: pick from {known}."
        )
    from lit_factory.data.spec import get_dataset_spec

    for name in chosen:  # dataset_info.json may name files anywhere; a run reads only what the workspace holds
        spec = get_dataset_spec(name, folder)
        if spec.hub_id is None:
            workspace.path(spec.path, f"dataset {name!r} file", "read")
    templates = available_templates()
    template = (form.template or "auto").strip()
    if template not in templates and not workspace.path(template, "template", "read").is_file():
        raise LitFactoryError(f"template: {template!r} is unknown. Fix: pick one of {templates}.")
    args.update(
        dataset_dir=dataset_dir,
        dataset=chosen,
        template=template,
        cutoff_len=parse_number("cutoff length", form.cutoff_len, int, 1),
        batch_size=parse_number("batch size", form.batch_size, int, 1),
    )
    if form.packing or "packing" in args:
        args["packing"] = bool(form.packing)
    val_size = parse_number("validation size", form.val_size or 0, float, 0)
    args["val_size"] = int(val_size) if val_size >= 1 or val_size == 0 else val_size
    max_samples = parse_optional_int("max samples", form.max_samples)
    if max_samples is None:
        args.pop("max_samples", None)
    else:
        args["max_samples"] = max_samples
    data["init_args"] = args
    return data


def _trainer_section(trainer: dict[str, Any], form: TrainForm, workspace: Workspace) -> dict[str, Any]:
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
    panels.write_trainer(trainer, form)
    run_name = (form.run_name or "").strip()
    if not run_name or "/" in run_name or "\\" in run_name or run_name in (".", ".."):
        raise LitFactoryError(f"run name: {run_name!r} must be a non-empty folder name. Fix: e.g. board-1.")
    if not str(form.output_dir or "").strip():
        raise LitFactoryError("output folder: empty. Fix: give a folder for runs, e.g. runs/board.")
    output_dir = Path(form.output_dir.strip())
    workspace.path(output_dir / run_name, "output folder", "inside")
    # The run's folder is exactly <output_dir>/<run_name>: the board knows where events and checkpoints land.
    trainer["logger"] = {
        "class_path": panels.LOGGERS[form.logger],
        "init_args": {"save_dir": str(output_dir.parent), "name": output_dir.name, "version": run_name,
                      **({"default_hp_metric": False} if form.logger == "tensorboard" else {})},  # no hp_metric at -1
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

    return RECIPE_HEADER + yaml.safe_dump(json.loads(json.dumps(recipe)), sort_keys=False, allow_unicode=True)
