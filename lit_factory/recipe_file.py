"""The checks a recipe file gets before jsonargparse reads it, so the user's error names the file (jsonargparse's
would not): UTF-8 text, YAML syntax, a mapping of sections. Used by the trainer subcommands (``lit_factory.cli``)
and the tools that take ``--config`` (``lit_factory.infer.recipe_options``); only ``yaml`` is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def recipe_problem(path: str) -> Optional[str]:
    """What makes the recipe at ``path`` unreadable (jsonargparse would report it without the file name)."""
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        return f"--config {path}: not UTF-8 text (byte {err.start}). Fix: save the recipe as UTF-8."
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        return f"--config {path}: YAML syntax error{where}: {problem}. Fix: correct the YAML there."
    if recipe is None:
        return (f"--config {path}: the recipe is empty. Fix: write the trainer/model/data sections, e.g. start from "
                "recipes/quickstart.yaml.")
    if not isinstance(recipe, dict):
        return (f"--config {path}: a recipe is a mapping of sections (trainer:, model:, data:), not a "
                f"{type(recipe).__name__}. Fix: start from recipes/quickstart.yaml.")
    return None
