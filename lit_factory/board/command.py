"""The Train tab's "preview command": the ``lit-factory fit`` command line that trains what the form says, written
as the base recipe plus one ``--key value`` override per value the form changed (as LlamaBoard shows its
``llamafactory-cli train`` command), so it runs as shown in the workspace without the board's recipe file.

Overrides are dotted keys where jsonargparse takes them (plain sections, a stage's or data module's
``init_args``); a component that changed inside (optimizer, fine-tuning method, logger, callbacks) is given whole
as JSON, which LightningCLI parses like the YAML it came from. A key the form removed is set to ``null``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Iterator

from lit_factory.board.recipe import is_shipped_recipe

_MISSING = object()


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def overrides(old: dict[str, Any], new: dict[str, Any], prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` pairs that turn the recipe ``old`` into ``new``."""
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before == value:
            continue
        dotted = f"{prefix}{key}"
        both_dicts = isinstance(before, dict) and isinstance(value, dict)
        # Recurse into plain sections, and into the top-level model / data components when their class stays.
        component = both_dicts and ("class_path" in value or "class_path" in before)
        if both_dicts and (not component or (depth == 0 and before.get("class_path") == value.get("class_path"))):
            yield from overrides(before, value, f"{dotted}.", depth + 1)
        else:
            yield dotted, value
    for key in old:
        if key not in new:
            yield f"{prefix}{key}", None


def base_config_path(base_name: str, workspace_root: Path) -> str:
    """How the command names the base recipe: ``recipes/<name>`` for a shipped one (``lit-factory`` finds it from
    any folder), else its path relative to the workspace."""
    if is_shipped_recipe(base_name):
        return f"recipes/{base_name}"
    path = Path(base_name)
    resolved = (path if path.is_absolute() else workspace_root / path).resolve()
    return str(resolved.relative_to(workspace_root)) if resolved.is_relative_to(workspace_root) else str(resolved)


def fit_command(base_name: str, base: dict[str, Any], recipe: dict[str, Any], workspace_root: Path) -> str:
    """The shell command, run in ``workspace_root``, that trains ``recipe`` (``base`` is what ``base_name`` holds)."""
    lines = [f"cd {shlex.quote(str(workspace_root))} && lit-factory fit --config "
             + shlex.quote(base_config_path(base_name, workspace_root))]
    for key, value in overrides(base, json.loads(json.dumps(recipe))):
        lines.append(f"--{key} {shlex.quote(_value(value))}")
    return CONTINUATION.join(lines)


# One override per line, joined with a shell line continuation (the command still runs when pasted as is).
CONTINUATION = " \\\n    "
