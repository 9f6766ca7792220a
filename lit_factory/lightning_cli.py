"""LightningCLI for the trainer subcommands (fit/validate/test/predict), with one-line errors."""

from __future__ import annotations

import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_factory.errors import LitFactoryError, fail


class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse prints usage plus a multi-line report; users get the report on one line and status 2."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse is probing internally and catches this
            return super().error(message, ex)
        sys.exit(fail(summarise_parser_error(message)))


# ModelArgs flags that became parts (quantization, patches): what an older recipe's key now reads as.
_QUANTIZATION = "quantization: {class_path: BitsAndBytes, init_args: {bits: 4, quant_type: nf4}}"
MOVED_MODEL_OPTIONS = {
    "rope_scaling": "patches: [{class_path: RopeScaling, init_args: {kind: linear, context_length: 8192}}]",
    "context_length": "patches: [{class_path: RopeScaling, init_args: {kind: linear, context_length: 8192}}]",
    "shift_attn": "patches: [ShiftedSparseAttention]",
    "neftune_alpha": "patches: [{class_path: NEFTune, init_args: {alpha: 5}}]",
    "fast_lora": "patches: [FastLoRA]",
    "liger_kernel": "patches: [LigerKernels]",
    "compile": "patches: [CompileLayers]",
    "double_quantization": "quantization: {class_path: BitsAndBytes, init_args: {double_quantization: false}}",
}


def summarise_parser_error(message: str) -> str:
    """jsonargparse's nested report (every Union branch, every subtype) cut to one line: the key, what is wrong,
    the accepted values, the fix. Unknown shapes of report pass through whole (``fail`` joins their lines)."""
    unknown = re.match(r"(?:unrecognized arguments: (\S+)|Subcommand '\w+' does not accept option '([^']+)')", message)
    if unknown is not None:
        option = unknown.group(1) or f"--{unknown.group(2)}"
        return (f"{option}: no such option ({message.strip()}). Fix: check its spelling and section; "
                "`lit-factory fit --config RECIPE --help` lists every option.")
    moved = re.search(r"Group 'model' does not accept option '(?:model\.)?(\w+)'", message)
    if moved is not None and moved.group(1) in MOVED_MODEL_OPTIONS:
        return (f"model.init_args.model.{moved.group(1)}: this option is now a part of the model settings. Fix: write "
                f"`{MOVED_MODEL_OPTIONS[moved.group(1)]}` under model.init_args.model (see recipes/methods/).")
    parts = re.split(r'Parser key "([^"]+)"', message)  # text, key, text, key, ... (outermost key first)
    keys, between = parts[1::2], parts[2::2]
    if not keys:
        return message
    key = keys[0]
    for text, inner in zip(between, keys[1:]):  # an inner key of a class_path lives under its init_args
        key += (".init_args." if "Problem with given class_path" in text else ".") + inner
    if re.search(r"Given value type: <class 'str'>\s*\n\s*Given value: None\b", message) and \
            "Expected a <class 'NoneType'>" in message:
        return (f"{key}: null given on the command line is read as text there, not as an empty value. Fix: set "
                f"`{key.split('.')[-1]}: null` in a recipe passed with another --config (or leave the key out).")
    not_accepted = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*Option '([^']+)' is not accepted", message)
    if not_accepted is not None:  # a key under a class's init_args that its constructor does not take
        owner, option = not_accepted.groups()
        return (f"{key}.init_args.{option}: {owner} has no such option. Fix: check its spelling and section; "
                "`lit-factory fit --config RECIPE --help` lists every option.")
    missing_class = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(module [^\n]+|No module[^\n]+)",
                              message)
    if missing_class is not None:
        return (f"{key}: class_path {missing_class.group(1)!r} cannot be imported ({missing_class.group(2).strip()}). "
                "Fix: name an existing class by its import path, e.g. lit_factory.model.LoRA or lit_factory.stages.SFT.")
    if key.endswith("model.quantization") and "Expected a dot import path string" in message:
        return (f"{key}: quantization is now a part, not a name. Fix: write `{_QUANTIZATION}` (fp4: quant_type fp4; "
                "int8: bits 8).")
    given = re.findall(r"(?:Got value|Given value): ([^\n]+)", message)
    value = given[0].strip() if given else "?"
    literals: list[str] = []
    for group in re.findall(r"Expected a typing\.Literal\[([^\]]*)\]", message):
        literals += [item.strip() for item in group.split(",") if item.strip() not in literals]
    if literals:
        return f"{key}: {value} is not accepted. Fix: use one of {', '.join(dict.fromkeys(literals))}."
    expected = [name for name in re.findall(r"Expected a <class '([^']+)'>", message) if name != "NoneType"]
    if expected:
        types = " or ".join(dict.fromkeys(expected))
        return f"{key}: {value} is not of type {types}. Fix: give a value of type {types}."
    noise = ("Given value", "Subtypes:", "Errors:", "Does not validate", "- Expected a <class 'NoneType'>",
             "- Problem with given class_path", "Parser key")
    reasons = [line.strip() for line in message.splitlines()[1:] if line.strip() and not line.strip().startswith(noise)]
    reason = (reasons[-1] if reasons else " ".join(message.split())).rstrip(".")[:300]
    return f"{key}: {reason}. Fix: `lit-factory fit --config RECIPE --help` lists the accepted keys and values."


class FactoryCLI(LightningCLI):
    """LightningCLI where the recipe names both the stage (``model``) and the data module (``data``)."""

    def init_parser(self, **kwargs):
        kwargs.setdefault("dump_header", ["lit-factory recipe (lit-factory fit --config this.yaml)"])
        parser = OneLineErrorParser(**kwargs)
        from jsonargparse import ActionConfigFile

        parser.add_argument("-c", "--config", action=ActionConfigFile, help="Path to a recipe (YAML).")
        return parser

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would rebuild the model from the checkpoint's hyperparameters, which name no stage class (they
        # are plain values); the recipe already is the whole configuration, the checkpoint only restores state.
        return None

    def before_instantiate_classes(self) -> None:
        check_values(self.config[self.subcommand] if self.subcommand else self.config)
        # `--ckpt_path last`, a pinned version folder that holds a run, stale staging: decided before building.
        if self.subcommand == "fit":
            from lit_factory.checkpointing import prepare_fit_run

            prepare_fit_run(self.config["fit"])

    def instantiate_classes(self) -> None:
        # jsonargparse wraps errors raised in constructors (e.g. a ModelArgs check) into its own report; the user
        # should see our one-line message instead.
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from lit_factory.distributed.checks import check_strategy

        try:
            super().instantiate_classes()
            check_strategy(self.trainer, self.model)
        except Exception as err:
            user_error = _user_error_in_chain(err)
            if user_error is not None:
                raise user_error from None
            missing = _missing_package(err)
            if missing is not None:
                raise missing from None
            if isinstance(err, MisconfigurationException) or _raised_by_trainer_checks(err):
                reason = " ".join(str(err).split())
                raise LitFactoryError(f"trainer: {reason} Fix: change that trainer setting in the recipe.") from None
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # The terminal's progress bar counts optimizer steps and prints the run's summary once closed; a recipe
        # that names a progress bar of its own, or turns the bar off, keeps its choice.
        from lightning.pytorch.callbacks import ProgressBar

        from lit_factory.callbacks import StepProgressBar

        given = config.get("callbacks") or []
        named = [*(given if isinstance(given, list) else [given]), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in named):
            callbacks = [*callbacks, StepProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        return guard_checkpoint_path(super()._prepare_subcommand_kwargs(subcommand))

    def _run_subcommand(self, subcommand: str) -> None:
        with checkpoint_errors_as_user_errors(self.trainer), removed_if_left_empty(self.trainer):
            super()._run_subcommand(subcommand)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The stage owns the tokenizer (it may add special tokens) and knows what data it needs: both flow into
        # the data module so a recipe writes the model path once.
        parser.link_arguments(
            "model", "data.init_args.tokenizer", compute_fn=lambda stage: stage.tokenizer, apply_on="instantiate"
        )
        from lit_factory.data.objectives import objective_key

        parser.link_arguments(  # by name (an import path for one of your own): it lands in hparams and checkpoints
            "model", "data.init_args.objective", compute_fn=lambda stage: objective_key(stage.data_objective),
            apply_on="instantiate",
        )
        parser.link_arguments(  # a vision-language model's image plugin (None for text models)
            "model", "data.init_args.media", compute_fn=lambda stage: stage.media, apply_on="instantiate"
        )


def _missing_package(err: BaseException) -> Optional[LitFactoryError]:
    """A class named in the recipe (a logger, an optimizer) whose package is not installed: which one to install."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    missing = next((e for e in chain if isinstance(e, ImportError)), None)
    if missing is None:
        return None
    text = " ".join(str(missing).split())
    named = next((m.group(1) for e in chain if (m := re.search(r"given class_path '([^']+)'", str(e)))), None)
    requirement = re.search(r"Requirement '([^']+)' not met", text)  # Lightning's RequirementCache
    module = getattr(missing, "name", None) or ""
    if requirement is None and (not isinstance(missing, ModuleNotFoundError) or not module
                                or module.split(".")[0] == "lit_factory"):
        return None  # not a third-party package that is absent: a real error, with its traceback
    package = requirement.group(1) if requirement else module.split(".")[0]
    where = f"{named} needs" if named else "the recipe needs"
    detail = "" if requirement else f" ({text[:200]})"
    return LitFactoryError(f"{where} the package {package!r}, which is not installed{detail}. Fix: pip install "
                           f"'{package}', or name another class in the recipe.")


def _raised_by_trainer_checks(err: BaseException) -> bool:
    """A ValueError from Lightning's checks of trainer arguments (accelerator, strategy, devices names)."""
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return isinstance(err, ValueError) and frame is not None and (
        "lightning/pytorch/trainer/connectors" in frame.tb_frame.f_code.co_filename.replace("\\", "/"))


def check_values(config: Any) -> None:
    """Values that would otherwise fail deep inside Lightning or torch with a traceback."""
    trainer = config.get("trainer") or {}
    for name in ("max_steps", "max_epochs"):
        value = trainer.get(name)
        if isinstance(value, int) and value < -1:
            raise LitFactoryError(f"trainer.{name}: {value} is negative. Fix: give a count >= 0, or -1 for no limit.")
    init_args = (config.get("model") or {}).get("init_args") or {}
    optimizer = init_args.get("optimizer") if hasattr(init_args, "get") else None
    lr = ((optimizer or {}).get("init_args") or {}).get("lr") if hasattr(optimizer, "get") else None
    if isinstance(lr, (int, float)) and lr < 0:
        raise LitFactoryError(f"model.init_args.optimizer.init_args.lr: {lr} is negative. Fix: give a learning rate "
                              "> 0, e.g. 1.0e-4.")


# Lightning resolves these names to a checkpoint itself.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def guard_checkpoint_path(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints are pickles: refuse remote URLs (Lightning would load them with ``weights_only=False``, i.e. run
    any code inside) and load every checkpoint with ``weights_only=True`` (tensors and plain values only)."""
    ckpt_path = kwargs.get("ckpt_path")
    if ckpt_path is not None:
        text = str(ckpt_path)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            raise LitFactoryError(f"--ckpt_path {text}: remote checkpoints are refused (a checkpoint is a pickle "
                                  "that can run code). Fix: download it yourself from a source you trust and pass "
                                  "the local path.")
        if text not in SPECIAL_CKPT_PATHS and not Path(text).is_file():
            raise LitFactoryError(f"--ckpt_path {text}: no such checkpoint file. Fix: give the path of a .ckpt "
                                  "file of an earlier run (runs/NAME/version_N/checkpoints/).")
    if "weights_only" in kwargs:
        kwargs["weights_only"] = True
    return kwargs


class checkpoint_errors_as_user_errors:
    """While a checkpoint is read and its state restored, errors mean the file is not one this recipe can resume
    from (truncated, not a checkpoint, unsafe, another model shape or method): one line naming the file."""

    def __init__(self, trainer: Any) -> None:
        self.connector = trainer._checkpoint_connector
        self.originals: dict[str, Any] = {}

    def __enter__(self) -> "checkpoint_errors_as_user_errors":
        for name in ("_restore_modules_and_callbacks", "restore_training_state"):
            original = self.originals[name] = getattr(self.connector, name)
            setattr(self.connector, name, self._wrapped(original))
        return self

    def _wrapped(self, restore: Any) -> Any:
        connector = self.connector

        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return restore(*args, **kwargs)
            except LitFactoryError:
                raise
            except Exception as err:
                path = connector._ckpt_path or (args[0] if args else kwargs.get("checkpoint_path"))
                reason = " ".join(str(err).split())
                reason = re.split(r" (?:In PyTorch 2\.6|Please file an issue|Check the documentation)", reason)[0]
                raise LitFactoryError(f"--ckpt_path {path}: cannot resume from it ({type(err).__name__}: "
                                      f"{reason[:200]}). Fix: give a complete checkpoint saved by this recipe "
                                      "(same model, method and stage).") from None

        return run

    def __exit__(self, *exc: Any) -> None:
        for name in self.originals:
            self.connector.__dict__.pop(name, None)


class removed_if_left_empty:
    """A run that fails leaves no ``version_N`` folder that holds nothing but its config and empty logs; a folder
    that existed before the run is never touched."""

    KEEP_ONLY_IF = re.compile(r"^(config\.yaml|hparams\.yaml|events\.out\.tfevents\..*)$")

    def __init__(self, trainer: Any) -> None:
        try:
            self.run_dir = Path(trainer.log_dir) if trainer.log_dir else None
        except Exception:  # a logger without a directory
            self.run_dir = None
        self.existed = self.run_dir is None or self.run_dir.exists()

    def __enter__(self) -> "removed_if_left_empty":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None or self.existed or not self.run_dir.is_dir():
            return
        files = [path for path in self.run_dir.rglob("*") if path.is_file()]
        # Event files of a run that logged nothing hold only headers (a few hundred bytes).
        if all(self.KEEP_ONLY_IF.match(path.name) and path.stat().st_size < 4096 for path in files):
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _user_error_in_chain(err: BaseException) -> Optional[LitFactoryError]:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitFactoryError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _cli_arguments() -> dict[str, Any]:
    """What `lit-factory fit` parses: any ``Stage`` subclass as ``model``, any data module as ``data``, the
    optimizer named inside the stage (no LightningCLI optimizer section)."""
    from lightning.pytorch import LightningDataModule

    from lit_factory.stages.base import Stage

    return dict(model_class=Stage, datamodule_class=LightningDataModule, subclass_mode_model=True,
                subclass_mode_data=True, auto_configure_optimizers=False)


def run_trainer_subcommand(args: Optional[list[str]]) -> None:
    """Run fit/validate/test/predict; ``args=None`` reads ``sys.argv``."""
    from lit_factory.quiet import silence_library_noise

    silence_library_noise()

    FactoryCLI(**_cli_arguments(), save_config_kwargs={"overwrite": True}, args=args)


class _ParserOnly(FactoryCLI):
    """``FactoryCLI`` stopped once its parsers are built: nothing is parsed from the command line, seeded,
    instantiated or run. Its subcommand parsers read recipes exactly as `lit-factory fit` does."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = args  # {"subcommand": NAME}: only what LightningCLI.__init__ reads next

    def _set_seed(self) -> None:
        return None

    def before_instantiate_classes(self) -> None:
        return None

    def instantiate_classes(self) -> None:
        return None

    def _run_subcommand(self, subcommand: str) -> None:
        return None


_parsers: dict[str, LightningArgumentParser] = {}
_parsers_lock = threading.RLock()  # jsonargparse parsers are not documented as thread-safe


def recipe_parser(subcommand: str = "fit") -> LightningArgumentParser:
    """The parser of `lit-factory SUBCOMMAND` (its classes, defaults and argument links), built once. It raises
    ``argparse.ArgumentError`` instead of exiting; :func:`parse_recipe_config` turns that into one line."""
    with _parsers_lock:  # the board reads recipes from several request threads
        if subcommand not in _parsers:
            quiet = {"exit_on_error": False}
            cli = _ParserOnly(**_cli_arguments(), args={"subcommand": subcommand}, load_from_checkpoint_support=False,
                              parser_kwargs={**quiet, **{name: dict(quiet) for name in FactoryCLI.subcommands()}})
            _parsers.update(cli._subcommand_parsers)
        return _parsers[subcommand]


def parse_recipe_config(recipe: dict[str, Any], subcommand: str = "fit") -> Any:
    """``recipe`` (a YAML mapping) parsed and checked as `lit-factory SUBCOMMAND --config` would: every class path
    imported and matched against what its key accepts, every value type-checked, defaults filled in, then the
    value checks of ``check_values``. Returns the jsonargparse namespace; bad input raises ``LitFactoryError``
    with the key and the fix (the caller names the file)."""
    import copy
    from argparse import ArgumentError

    parser = recipe_parser(subcommand)
    try:
        with _parsers_lock:
            config = parser.parse_object(copy.deepcopy(recipe))  # jsonargparse writes into the mapping given
    except ArgumentError as err:
        raise LitFactoryError(summarise_parser_error(str(err))) from None
    check_values(config)
    return config


def instantiate_stage_and_data(config: Any, subcommand: str = "fit") -> tuple[Any, Any]:
    """The stage and data module a parsed recipe names, built by the CLI's parser with its argument links (the
    stage's tokenizer, data objective and image plugin flow into the data module). Not the trainer, and no model
    weights (a stage builds its model in ``configure_model``)."""
    parts = config.clone()
    del parts["trainer"]  # its strategy or logger may need packages or devices a preview does not
    try:
        parser = recipe_parser(subcommand)
        with _parsers_lock:
            built = parser.instantiate(parts, instantiate_groups=False)
    except Exception as err:
        user_error = _user_error_in_chain(err) or _missing_package(err)
        if user_error is not None:
            raise user_error from None
        raise
    return built.model, built.data
