"""The Export tab: merge an adapter into its base model and save the result (``lit_factory.model.export``)."""

from __future__ import annotations

from typing import Any

from lit_factory.board.handlers import guarded, local_folder, local_path, run_output
from lit_factory.board.locales import text
from lit_factory.board.runs import RunManager
from lit_factory.errors import LitFactoryError

DTYPES = ["auto", "float32", "bfloat16", "float16"]


def build_export_tab(ui: Any, manager: RunManager, lang: Any) -> None:
    """Add the Export tab's components and handlers to the open ``gr.Blocks`` (inside its ``gr.Tab``)."""
    import gradio as gr

    word = ui.word
    with gr.Row():
        run_pick = ui("chat_run", gr.Dropdown([], label=word("chat_run"), allow_custom_value=True, scale=2))
        model = ui("chat_model", gr.Textbox(label=word("chat_model"), elem_id="export_model", scale=2))
        adapter = ui("chat_adapter", gr.Textbox(label=word("chat_adapter"), elem_id="export_adapter", scale=2))
    with gr.Row():
        output = ui("export_dir", gr.Textbox(label=word("export_dir"), elem_id="export_dir", scale=2))
        dtype = ui("export_dtype", gr.Dropdown(DTYPES, value="auto", label=word("export_dtype")))
        shard = ui("export_shard", gr.Textbox("2GB", label=word("export_shard")))
        export_button = ui("export_button", gr.Button(word("export_button"), variant="primary"), "value")
    status = gr.Markdown(elem_id="export_status")

    @guarded(outputs=3, status_at=-1)
    def use_run(name: str, lang_code: str) -> tuple:
        path, adapter_dir, _ = run_output(manager, name)
        return path, adapter_dir, ""

    @guarded(outputs=1, status_at=0)
    def export(path: str, adapter_dir: str, folder: str, dtype_name: str, max_shard: str, lang_code: str) -> str:
        from lit_factory.model.export import export_model

        if not (path or "").strip():
            raise LitFactoryError("model path: empty. Fix: give the base model folder (or pick a run).")
        if not (folder or "").strip():
            raise LitFactoryError("export folder: empty. Fix: give the folder to write the merged model to.")
        target = manager.workspace.path(folder, "export folder", "inside")
        saved = export_model(local_path(manager, path), str(target), adapter=local_folder(manager, adapter_dir) or None,
                             dtype=dtype_name, max_shard_size=(max_shard or "2GB").strip())
        return text(lang_code, "msg_exported", path=saved)

    run_pick.focus(lambda: gr.update(choices=manager.discover()), None, run_pick, api_name=False)
    run_pick.change(use_run, [run_pick, lang], [model, adapter, status], api_name="export_use_run")
    checks = [(0, word("chat_model"), "model"), (1, word("chat_adapter"), "read"), (2, word("export_dir"), "inside")]
    export_button.click(export, [model, adapter, output, dtype, shard, lang], status, api_name="export",
                        validator=manager.workspace.validator(checks))
