"""What the board's tabs share in their handlers: errors shown as one line in the page (``guarded``), and the
model a run saved or a path the page names, resolved inside the workspace."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from lit_factory.board.locales import LANGUAGES, text
from lit_factory.board.runs import RUN_CONFIG_FILES, RunManager
from lit_factory.errors import LitFactoryError

log = logging.getLogger(__name__)

# Inputs of the model loaders that name paths: (locale key of the label, workspace kind), by position.
MODEL_INPUT_CHECKS = (("chat_model", "model"), ("chat_adapter", "read"), ("tokenizer", "model"))


def guarded(outputs: int, status_at: int) -> Callable:
    """Wrap a handler so that any error becomes a one-line message in the status output (position ``status_at``
    of ``outputs``); the other outputs stay as they were. The handler's last argument is the page's language."""

    def wrap(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(*args: Any) -> Any:
            import gradio as gr

            try:
                return handler(*args)
            except LitFactoryError as err:
                message = " ".join(str(err).split())
            except Exception as err:  # a bug or a library error: the page gets one line, the console the traceback
                log.exception("board handler %s failed", handler.__name__)
                message = f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"
            lang = args[-1] if args and args[-1] in LANGUAGES else "en"
            result = [gr.update() for _ in range(outputs)]
            result[status_at] = text(lang, "msg_error", message=message)
            return result[0] if outputs == 1 else tuple(result)

        return run

    return wrap


def run_output(manager: RunManager, name: str) -> tuple[str, str, str]:
    """``(model path, adapter, tokenizer)`` that load what run ``name`` saved: its folder as the model, or, for an
    adapter run, the recipe's base model with the folder as adapter."""
    import yaml

    run = manager.get(name)
    folder = run.log_dir
    if (folder / "adapter_config.json").is_file():
        config = next((folder / file for file in RUN_CONFIG_FILES if (folder / file).is_file()), None)
        if config is None:
            raise LitFactoryError(f"run {name!r}: no {' or '.join(RUN_CONFIG_FILES)} in {folder} names the base "
                                  "model of its adapter. Fix: give the base model path and the adapter folder.")
        recipe = yaml.safe_load(config.read_text(encoding="utf-8"))
        model_args = recipe["model"]["init_args"]["model"]
        if not model_args.get("path"):
            raise LitFactoryError(
                f"run {name!r}: its adapter sits on a randomly initialised model (inline config) that was not "
                "saved; chat needs a base model folder. Fix: train full (method Full) or from a model path."
            )
        return model_args["path"], str(folder), model_args.get("tokenizer") or ""
    if (folder / "config.json").is_file():
        return str(folder), "", ""
    raise LitFactoryError(f"run {name!r}: no saved model in {folder} yet. Fix: wait until the run finishes.")


def local_path(manager: RunManager, value: str, what: str = "model path") -> str:
    """A model or tokenizer the page names: its folder in the workspace (resolved), or a hub id as given; a path
    outside the workspace is refused (``OutsideWorkspace``)."""
    return manager.workspace.model_source(value, what)


def local_folder(manager: RunManager, value: str, what: str = "adapter folder") -> str:
    """An adapter (or other) folder the page names, resolved inside the workspace; empty stays empty."""
    value = (value or "").strip()
    return str(manager.workspace.path(value, what, "read")) if value else ""
