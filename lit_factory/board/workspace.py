"""The board's workspace: the one folder whose files the board reads and writes (``lit-factory board --workspace``).

The board runs training and writes files for whoever can send it requests, so every path a request names is
confined here: output, run and export folders, dataset folders and preview files, saved arguments, the model,
tokenizer and adapter folders that Chat, Evaluate and Export read. A relative path is taken from the workspace;
an absolute path, a ``../`` escape or a symlink leading out (paths are resolved before the check) is refused with
a one-line message in the page and a 422 from the API (a gradio validator runs the same check before the handler).

Besides the workspace, two things pass: a hub id (``org/name``) where a model or tokenizer is asked for (it is
downloaded, not read from disk), and, for reading only, the files shipped with lit-factory (``recipes/``,
``templates/``, ``lit_factory/assets/...``), which the quickstart names relative to a checkout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lit_factory.errors import LitFactoryError
from lit_factory.shipped import PACKAGE_DIR, SHIPPED_FOLDERS, shipped_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Kinds of path a form field holds: "inside" (the workspace only: what the board writes or watches), "read"
# (inside, or a shipped file), "model" (read, or a hub id).
KINDS = ("inside", "read", "model")


class OutsideWorkspace(LitFactoryError):
    """A path a request named resolves outside the board's workspace."""


def shipped_copy(relative: Path) -> Optional[Path]:
    """Where lit-factory ships a file named relative to a checkout (``lit_factory/assets/demo``, ``recipes/...``);
    looked up here rather than with ``resolve_shipped_path``, which tries the process's working directory first."""
    if not relative.parts:
        return None
    head, *rest = relative.parts
    if head == PACKAGE_DIR.name:
        return PACKAGE_DIR.joinpath(*rest)
    return shipped_dir(head).joinpath(*rest) if head in SHIPPED_FOLDERS else None


def shipped_roots() -> list[Path]:
    """Folders of files shipped with lit-factory (read-only for the board)."""
    return [PACKAGE_DIR / "assets", *(shipped_dir(name).resolve() for name in SHIPPED_FOLDERS)]


class Workspace:
    """The board's root folder and the checks of paths against it.

    Args:
        root: The folder; runs start in it and relative paths are taken from it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __str__(self) -> str:
        return str(self.root)

    def contains(self, path: str | Path) -> bool:
        """Whether ``path`` (relative to the root, or absolute) resolves inside the workspace."""
        given = Path(path).expanduser()
        return (given if given.is_absolute() else self.root / given).resolve().is_relative_to(self.root)

    def _refuse(self, what: str, value: str) -> OutsideWorkspace:
        return OutsideWorkspace(
            f"{what}: {value!r} is outside the board's workspace {self.root}. Fix: give a path inside it (relative "
            "to it), or start the board with --workspace on a folder that holds it."
        )

    def path(self, value: str | Path, what: str, kind: str = "inside") -> Path:
        """``value`` as the resolved path the board may use; ``kind`` ``read`` also allows a shipped file named
        relative to a checkout (``lit_factory/assets/demo``) or given absolute. Raises ``OutsideWorkspace``."""
        text = str(value).strip()
        given = Path(text).expanduser()
        inside = (given if given.is_absolute() else self.root / given).resolve()
        is_inside = inside.is_relative_to(self.root)
        if is_inside and (kind == "inside" or inside.exists()):
            return inside
        if kind != "inside":  # the workspace's own copy first, then the shipped one
            candidate = given if given.is_absolute() else shipped_copy(given)
            resolved = candidate.resolve() if candidate is not None else None
            if resolved is not None and resolved.exists() and any(resolved.is_relative_to(r) for r in shipped_roots()):
                return resolved
        if is_inside:  # missing: the caller says what is not there
            return inside
        raise self._refuse(what, text)

    def model_source(self, value: str, what: str) -> str:
        """A model or tokenizer: a folder in the workspace (or shipped) as its resolved path, or a hub id as given."""
        text = (value or "").strip()
        if not text:
            return ""
        local = self.root / text
        if HUB_ID.match(text) and not Path(text).is_absolute() and not local.exists() and ".." not in text:
            return text
        return str(self.path(text, what, "read"))

    def check(self, value: Any, what: str, kind: str) -> None:
        """Raise ``OutsideWorkspace`` when a form value of ``kind`` names a path outside (empty values pass)."""
        if value is None or not str(value).strip():
            return
        if kind == "model":
            self.model_source(str(value), what)
        else:
            self.path(str(value), what, kind)

    def validator(self, checks: Sequence[tuple[int, str, str] | None]) -> Callable[..., list[Any]]:
        """A gradio ``validator`` for an event: ``checks[i]`` is ``(position, label, kind)`` or ``None``; the input
        at ``position`` must pass :meth:`check`. gradio runs it before the handler and answers a failure with 422
        (the page shows the message on the field; ``gradio_client`` raises ``ValidationError``)."""
        import gradio as gr

        wanted = {position: (what, kind) for position, what, kind in filter(None, checks)}

        def validate(*values: Any) -> list[Any]:
            results = []
            for position, value in enumerate(values):
                if position not in wanted:
                    results.append(gr.validate(True, ""))
                    continue
                what, kind = wanted[position]
                try:
                    self.check(value, what, kind)
                    results.append(gr.validate(True, ""))
                except OutsideWorkspace as err:
                    results.append(gr.validate(False, str(err)))
            return results

        return validate


def check_recipe_paths(recipe: dict[str, Any], workspace: Workspace) -> None:
    """Refuse a recipe (assembled from a base recipe and free YAML options) whose paths lead out of the workspace:
    the model, tokenizer and adapter, the dataset folder, the logger's folder, checkpoint folders, PPO's reward
    model. A hub id passes for models."""
    stage_args = (recipe.get("model") or {}).get("init_args") or {}
    model_args = stage_args.get("model") or {}
    for key in ("path", "tokenizer"):
        workspace.check(model_args.get(key), f"model.{key}", "model")
    workspace.check(model_args.get("adapter"), "model.adapter", "read")
    workspace.check(stage_args.get("reward_model"), "reward_model", "read")
    data_args = (recipe.get("data") or {}).get("init_args") or {}
    workspace.check(data_args.get("dataset_dir"), "data.dataset_dir", "read")
    template = data_args.get("template")
    if isinstance(template, str) and (template.endswith((".yaml", ".yml", ".jinja")) or "/" in template):
        workspace.check(template, "data.template", "read")
    trainer = recipe.get("trainer") or {}
    workspace.check(trainer.get("default_root_dir"), "trainer.default_root_dir", "inside")
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict):
            workspace.check((logger.get("init_args") or {}).get("save_dir"), "trainer.logger.save_dir", "inside")
    callbacks = trainer.get("callbacks")
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(callback, dict):
            workspace.check((callback.get("init_args") or {}).get("dirpath"), "trainer.callbacks.dirpath", "inside")


def folders_with(workspace: Workspace, marker: str, limit: int = 50, depth: int = 5) -> list[str]:
    """Folders under the workspace (relative paths, hidden ones skipped, at most ``depth`` deep) that hold
    ``marker`` (``config.json`` for models, ``adapter_config.json`` for adapters): the model and adapter pickers."""
    import os

    found: list[str] = []
    for folder, subfolders, files in os.walk(workspace.root):  # does not follow symlinked folders
        relative = Path(folder).relative_to(workspace.root)
        deeper = len(relative.parts) < depth
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")) if deeper else []
        if marker in files and relative.parts:
            found.append(relative.as_posix())
            if len(found) >= limit:
                break
    return found
