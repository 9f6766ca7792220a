"""``lit-factory board``: a local web app (Gradio) that configures, launches and watches fine-tuning runs.

    lit-factory board --port 7860        # then open http://127.0.0.1:7860

Every label exists in English, Chinese and Russian (``locales/``); the language is chosen at the top of the page.
Bad input is answered by a message in the page (the status line under the buttons), never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Optional

from lit_factory.board.guard import HostOriginGuard, default_allowed_hosts, is_loopback, parse_auth
from lit_factory.board.locales import LANGUAGES, labels, text
from lit_factory.board.runs import RunManager
from lit_factory.errors import LitFactoryError

CSS = """
mark.loss { background: #fde68a; color: inherit; }
pre.sample { white-space: pre-wrap; max-height: 16em; overflow-y: auto; }
.board-progress progress { width: 100%; height: 1.2em; }
"""


class Labels:
    """Components whose label (or, for buttons and headings, value) is a word from the locale dictionaries."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang
        self.entries: list[tuple[str, Any, str]] = []  # (key, component, what the word sets)

    def __call__(self, key: str, component: Any, sets: str = "label") -> Any:
        self.entries.append((key, component, sets))
        info = labels(self.lang).get(f"{key}.info")
        if sets == "label" and info:
            component.info = info  # read when the page's config is built, after construction
        return component

    def word(self, key: str) -> str:
        return labels(self.lang)[key]

    def updates(self, lang: str) -> list[Any]:
        """One ``gr.update`` per registered component, with the words of ``lang``."""
        import gradio as gr

        words = labels(lang)
        result = []
        for key, _, sets in self.entries:
            if sets == "label":
                info = words.get(f"{key}.info")
                result.append(gr.update(label=words[key], **({"info": info} if info else {})))
            else:
                result.append(gr.update(**{sets: words[key]}))
        return result

    @property
    def components(self) -> list[Any]:
        return [component for _, component, _ in self.entries]


def build_app(workdir: str | Path = ".", default_recipe: str = "quickstart.yaml") -> Any:
    """The board's ``gr.Blocks``; ``workdir`` is its workspace: runs start in it, relative paths are taken from it,
    and every path the page names must lie in it (``workspace.py``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from lit_factory.board.tabs.train import build_train_tab

    manager = RunManager(workdir)
    ui = Labels("en")
    with gr.Blocks(title="lit-factory board", analytics_enabled=False) as app:
        with gr.Row():
            ui("title", gr.Markdown(f"## {ui.word('title')}"), "value")
            lang = ui("language", gr.Dropdown(label=ui.word("language"), 
                choices=[(name, code) for code, name in LANGUAGES.items()], value="en", scale=0, min_width=160,
                elem_id="language",
            ))
        with gr.Tabs():
            with ui("tab_train", gr.Tab(ui.word("tab_train"), elem_id="tab-train")):
                build_train_tab(ui, manager, lang, default_recipe)
            # Tabs over other parts of the project appear once those parts are installed.
            if _installed("lit_factory.infer.engine"):
                from lit_factory.board.tabs.chat import build_chat_tab

                with ui("tab_chat", gr.Tab(ui.word("tab_chat"), elem_id="tab-chat")):
                    build_chat_tab(ui, manager, lang)
            if _installed("lit_factory.eval.choice") and _installed("lit_factory.infer.predict"):
                from lit_factory.board.tabs.evaluate import build_evaluate_tab

                with ui("tab_evaluate", gr.Tab(ui.word("tab_evaluate"), elem_id="tab-evaluate")):
                    build_evaluate_tab(ui, manager, lang)
            if _installed("lit_factory.model.export"):
                from lit_factory.board.tabs.export import build_export_tab

                with ui("tab_export", gr.Tab(ui.word("tab_export"), elem_id="tab-export")):
                    build_export_tab(ui, manager, lang)
        lang.change(lambda code: _relabel(ui, code), inputs=lang, outputs=ui.components, api_name="set_language")
    app.board_manager = manager  # type: ignore[attr-defined]
    return app


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _relabel(ui: Labels, lang: str) -> list[Any]:
    import gradio as gr

    updates = ui.updates(lang)
    for index, (key, _, sets) in enumerate(ui.entries):
        if key == "title":
            updates[index] = gr.update(value=f"## {labels(lang)['title']}")
    return updates


def main(argv: Optional[list[str]] = None) -> int:
    """``lit-factory board [--host 127.0.0.1] [--port 7860] [--workspace .] [--recipe quickstart.yaml]``."""
    parser = argparse.ArgumentParser(prog="lit-factory board", description="Web UI for fine-tuning runs.")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--workspace", "--workdir", dest="workspace", default=".",
                        help="the only folder the board reads and writes (runs, outputs, datasets, models, exports; "
                             "shipped recipes and demo data are readable too); runs start in it (default: here)")
    parser.add_argument("--recipe", default="quickstart.yaml", help="recipe the Train tab starts from")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (set it when --host is not "
                        "127.0.0.1: anyone who reaches the board can start runs and write files)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name browsers may use to reach the board besides IP addresses, localhost "
                             "and this machine's name (repeatable; other Host/Origin headers get 403)")
    args = parser.parse_args(argv)
    auth = parse_auth(args.auth)
    if not Path(args.workspace).is_dir():
        raise LitFactoryError(f"--workspace: {args.workspace!r} is not a folder. Fix: give an existing folder.")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LitFactoryError("board: gradio is not installed. Fix: pip install 'lit-factory[board]'.") from None
    from starlette.middleware import Middleware

    app = build_app(args.workspace, args.recipe)
    print(f"lit-factory board on http://{args.host}:{args.port}, workspace {Path(args.workspace).resolve()} "
          "(Ctrl-C to quit)", flush=True)
    if auth is None and not is_loopback(args.host):
        print(f"lit-factory board: warning: serving on {args.host} without --auth; anyone who reaches it can start "
              "runs and write files in the workspace", file=sys.stderr, flush=True)
    guard = Middleware(HostOriginGuard, allowed_hosts=default_allowed_hosts(args.allowed_host))
    try:
        app.queue(default_concurrency_limit=4).launch(
            server_name=args.host, server_port=args.port, ssr_mode=False, quiet=True, css=CSS, auth=auth,
            app_kwargs={"middleware": [guard]},
        )
    finally:
        app.board_manager.shutdown()
    return 0
