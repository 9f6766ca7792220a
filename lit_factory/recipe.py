"""Recipes read one way: as `lit-factory fit --config` reads them.

:func:`parse_recipe` runs a recipe through the trainer CLI's own parser (``lightning_cli.recipe_parser``): every
``class_path`` is imported and checked against what its key accepts (``model`` takes any ``Stage`` subclass, a
user's ``mypkg.MyDPO`` as much as ``lit_factory.stages.DPO``), every value is type-checked, defaults are filled in,
and bad input is one line naming the file, the key and the fix. The board (its form and its checks) and
`lit-factory data` read recipes through it; :meth:`ParsedRecipe.stage_and_data` builds the stage and data module
with the CLI's own argument links, so a preview sees the tokenizer and data objective that training gets.

Heavy imports (Lightning, the stages) happen on the first parse, not on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Optional, Union

from lit_factory.errors import LitFactoryError


def _load_yaml(path: Path, label: str) -> Any:
    """The YAML document in ``path``; a one-line error starting with ``label`` when it cannot be read."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LitFactoryError(f"{label}: cannot read the recipe ({err.strerror or err}). Fix: give the path of "
                              "a recipe YAML (see recipes/).") from None
    except UnicodeDecodeError as err:
        raise LitFactoryError(f"{label}: not UTF-8 text (byte {err.start}). Fix: save the recipe as UTF-8.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise LitFactoryError(f"{label}: YAML syntax error{where}: {problem}. Fix: correct the YAML there.") from None


def read_config_file(path: str) -> dict[str, Any]:
    """The sections of a ``--config`` file (a recipe, or a run's config.yaml) before jsonargparse reads it, so the
    error names the file (jsonargparse's would not): UTF-8 text, YAML syntax, a mapping of sections."""
    label = f"--config {path}"
    recipe = _load_yaml(Path(path), label)
    if recipe is None:
        raise LitFactoryError(f"{label}: the recipe is empty. Fix: write the trainer/model/data sections, e.g. start "
                              "from recipes/quickstart.yaml.")
    if not isinstance(recipe, dict):
        raise LitFactoryError(f"{label}: a recipe is a mapping of sections (trainer:, model:, data:), not a "
                              f"{type(recipe).__name__}. Fix: start from recipes/quickstart.yaml.")
    return recipe


def recipe_problem(path: str) -> Optional[str]:
    """What makes the ``--config`` file at ``path`` unreadable (see :func:`read_config_file`); None if nothing."""
    try:
        read_config_file(path)
    except LitFactoryError as err:
        return str(err)
    return None


def read_recipe(path: Union[str, Path]) -> dict[str, Any]:
    """The YAML mapping of the recipe file at ``path`` (not parsed yet); one-line errors naming the file."""
    path = Path(path)
    recipe = _load_yaml(path, str(path))
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        raise LitFactoryError(f"{path}: not a lit-factory recipe (no `model` section). Fix: start from a recipe "
                              "in recipes/ (lit-factory recipes list).")
    return recipe


@dataclass(frozen=True)
class ParsedRecipe:
    """A recipe as the trainer CLI parsed it.

    Attributes:
        raw: The YAML mapping as written (what the board writes its form over: defaults stay implicit).
        config: The parsed recipe (a jsonargparse namespace of the subcommand): class paths resolved, values
            checked, every default filled in.
        source: Where the recipe came from (a path), for error messages.
        subcommand: The subcommand whose parser read it (``fit``).
    """

    raw: dict[str, Any]
    config: Any
    source: str
    subcommand: str = "fit"

    @property
    def stage_class(self) -> type:
        """The stage class ``model.class_path`` names (a ``Stage`` subclass: the parser checked it)."""
        return import_class(self.config.model.class_path)

    def stage_and_data(self) -> tuple[Any, Any]:
        """The stage and data module, built and linked as `lit-factory fit` builds them (no trainer, no model
        weights: the stage loads its tokenizer, the model comes in ``configure_model``)."""
        from lit_factory.lightning_cli import instantiate_stage_and_data

        try:
            return instantiate_stage_and_data(self.config, self.subcommand)
        except LitFactoryError as err:
            raise LitFactoryError(f"{self.source}: {err}") from None


def parse_recipe(recipe: Union[dict[str, Any], str, Path], source: str = "", subcommand: str = "fit") -> ParsedRecipe:
    """``recipe`` (a mapping, or the path of a YAML file) parsed and checked by the parser of `lit-factory
    SUBCOMMAND`. Raises ``LitFactoryError``: ``<source>: <key>: <what is wrong>. Fix: ...``."""
    from lit_factory.lightning_cli import parse_recipe_config

    if not isinstance(recipe, dict):
        source = source or str(recipe)
        recipe = read_recipe(recipe)
    source = source or "recipe"
    try:
        config = parse_recipe_config(recipe, subcommand)
    except LitFactoryError as err:
        raise LitFactoryError(f"{source}: {err}") from None
    return ParsedRecipe(raw=recipe, config=config, source=source, subcommand=subcommand)


def import_class(class_path: str) -> type:
    """The class at an import path (``lit_factory.stages.DPO``, ``mypkg.losses.MyDPO``)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise LitFactoryError(f"class_path {class_path!r} cannot be imported ({err}). Fix: give the import path of "
                              "an existing class, e.g. lit_factory.stages.SFT.") from None
