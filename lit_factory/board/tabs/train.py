"""The Train tab: a recipe form, the recipe it assembles, launch / stop / resume, and the run monitor."""

from __future__ import annotations

import html
import time
from typing import Any

from lit_factory.board import recipe as recipes
from lit_factory.board.locales import text
from lit_factory.board.runs import RunManager, log_tail, loss_curve, progress_summary

MONITOR_SECONDS = 2.0  # how often an open page redraws progress, log and loss curve
# Fixed line colours per series (the browser test looks for them in a screenshot).
LOSS_COLORS = {"train/loss": "#1f77b4", "val/loss": "#ff7f0e"}
# The log box follows the end of the log: gradio's Textbox `autoscroll` leaves it at the top (gradio 6.31).
FOLLOW_LOG_END = ("() => { setTimeout(() => { const box = document.querySelector('#log textarea');"
                  " if (box) box.scrollTop = box.scrollHeight; }, 50); }")


def new_run_name() -> str:
    """A fresh run folder name, ``board-YYYYmmdd-HHMMSS``."""
    return time.strftime("board-%Y%m%d-%H%M%S")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_html(summary: dict[str, Any], lang: str) -> str:
    """A progress bar with step / total, percent, ETA and the run's status."""
    words = text(lang, "progress_line", step=summary["step"], total=summary["total"] or "?",
                 percent=summary["percent"], eta=_eta(summary["eta"]), status=summary["status"])
    return (f'<div class="board-progress"><progress max="100" value="{summary["percent"]:.1f}"></progress>'
            f'<div class="progress-text">{html.escape(words)}</div></div>')


def build_train_tab(ui: Any, manager: RunManager, lang: Any, default_recipe: str) -> None:
    """Add the Train tab's components and handlers to the open ``gr.Blocks`` (inside its ``gr.Tab``)."""
    import gradio as gr
    import pandas as pd

    from lit_factory.board.app import guarded

    workdir = manager.workdir
    start_form = recipes.form_from_recipe(recipes.load_recipe(default_recipe), new_run_name())
    word = ui.word
    fields: dict[str, Any] = {}

    def field(name: str, component: Any) -> Any:
        fields[name] = ui(name, component)
        return component

    base = ui("base_recipe", gr.Dropdown(recipes.list_recipes(), value=default_recipe, label=word("base_recipe"),
                                         allow_custom_value=True, elem_id="base_recipe"))  # or a recipe's path
    with gr.Row():
        field("model_path", gr.Textbox(start_form.model_path, label=word("model_path"), elem_id="model_path",
                                       placeholder="Qwen/Qwen2.5-0.5B-Instruct", scale=3))
        field("tokenizer", gr.Textbox(start_form.tokenizer, label=word("tokenizer"), elem_id="tokenizer", scale=2))
        field("template", gr.Dropdown(recipes.available_templates(), value=start_form.template, allow_custom_value=True,
                                      label=word("template"), elem_id="template"))
    with gr.Row():
        field("stage", gr.Dropdown(recipes.available_stages(), value=start_form.stage, label=word("stage"),
                                   allow_custom_value=True, elem_id="stage"))
        field("method", gr.Dropdown(recipes.available_methods(), value=start_form.method, label=word("method"),
                                    allow_custom_value=True, elem_id="method"))
    with gr.Row(visible=start_form.method == "LoRA") as lora_row:
        field("lora_r", gr.Number(start_form.lora_r, label=word("lora_r"), precision=0, elem_id="lora_r"))
        field("lora_alpha", gr.Number(start_form.lora_alpha, label=word("lora_alpha"), elem_id="lora_alpha"))
        field("lora_dropout", gr.Number(start_form.lora_dropout, label=word("lora_dropout"), elem_id="lora_dropout"))
        field("lora_targets", gr.Textbox(start_form.lora_targets, label=word("lora_targets"), elem_id="lora_targets"))
    with gr.Row(visible=start_form.method == "Freeze") as freeze_row:
        field("freeze_layers", gr.Number(start_form.freeze_layers, label=word("freeze_layers"), precision=0))
        field("freeze_extra", gr.Textbox(start_form.freeze_extra, label=word("freeze_extra")))
    with gr.Row():
        field("method_options", gr.Textbox(start_form.method_options, label=word("method_options"), lines=2))
        field("stage_options", gr.Textbox(start_form.stage_options, label=word("stage_options"), lines=2))
    with gr.Row():
        field("dataset_dir", gr.Textbox(start_form.dataset_dir, label=word("dataset_dir"), elem_id="dataset_dir"))
        field("datasets", gr.Dropdown(_dataset_choices(start_form.dataset_dir, workdir), value=start_form.datasets,
                                      multiselect=True, allow_custom_value=True, label=word("datasets"),
                                      elem_id="datasets", scale=2))
        preview_button = ui("preview_button", gr.Button(word("preview_button"), scale=0), "value")
    preview_count = ui("preview_count", gr.Textbox(label=word("preview_count"), interactive=False))
    preview = gr.HTML()
    with gr.Row():
        field("learning_rate", gr.Textbox(start_form.learning_rate, label=word("learning_rate"),
                                          elem_id="learning_rate"))
        field("lr_schedule", gr.Dropdown(recipes.LR_SCHEDULES, value=start_form.lr_schedule,
                                         label=word("lr_schedule")))
        field("warmup_steps", gr.Textbox(start_form.warmup_steps, label=word("warmup_steps")))
        field("max_epochs", gr.Textbox(start_form.max_epochs, label=word("max_epochs"), elem_id="max_epochs"))
        field("max_steps", gr.Textbox(start_form.max_steps, label=word("max_steps"), elem_id="max_steps"))
    with gr.Row():
        field("batch_size", gr.Number(start_form.batch_size, label=word("batch_size"), precision=0,
                                      elem_id="batch_size"))
        field("grad_accum", gr.Number(start_form.grad_accum, label=word("grad_accum"), precision=0))
        field("cutoff_len", gr.Number(start_form.cutoff_len, label=word("cutoff_len"), precision=0))
        field("val_size", gr.Textbox(start_form.val_size, label=word("val_size"), elem_id="val_size"))
        field("max_samples", gr.Textbox(start_form.max_samples, label=word("max_samples")))
        field("precision", gr.Dropdown(recipes.PRECISIONS, value=start_form.precision, label=word("precision")))
        field("log_every_n_steps", gr.Number(start_form.log_every_n_steps, label=word("log_every_n_steps"),
                                             precision=0, elem_id="log_every_n_steps"))
    with gr.Row():
        field("output_dir", gr.Textbox(start_form.output_dir, label=word("output_dir"), elem_id="output_dir"))
        field("run_name", gr.Textbox(start_form.run_name, label=word("run_name"), elem_id="run_name"))
    form = [fields[name] for name in recipes.FORM_FIELDS]
    with gr.Row():
        show_button = ui("show_button", gr.Button(word("show_button"), elem_id="show_button"), "value")
        start_button = ui("start_button", gr.Button(word("start_button"), variant="primary", elem_id="start_button"),
                          "value")
    status = gr.Markdown(elem_id="status")
    recipe_view = ui("recipe_yaml", gr.Code(language="yaml", label=word("recipe_yaml"), elem_id="recipe_yaml"))

    ui("monitor", gr.Markdown(f"### {word('monitor')}"), "value")
    with gr.Row():
        run_select = ui("run_select", gr.Dropdown([], label=word("run_select"), elem_id="run_select", scale=2,
                                                  allow_custom_value=True))  # the manager checks the name
        stop_button = ui("stop_button", gr.Button(word("stop_button"), variant="stop", elem_id="stop_button"), "value")
        resume_button = ui("resume_button", gr.Button(word("resume_button"), elem_id="resume_button"), "value")
    with gr.Row():
        watch_dir = ui("watch_dir", gr.Textbox(label=word("watch_dir"), scale=2))
        watch_button = ui("watch_button", gr.Button(word("watch_button")), "value")
    progress = gr.HTML(elem_id="progress")
    with gr.Row():
        loss_plot = ui("loss_plot", gr.LinePlot(x="step", y="loss", color="series", label=word("loss_plot"),
                                                color_map=LOSS_COLORS, elem_id="loss_plot", height=300))
        log_box = ui("log", gr.Textbox(label=word("log"), lines=14, max_lines=14, autoscroll=True, elem_id="log"))

    # ---- handlers ----------------------------------------------------------------------------------------------
    def read_form(values: tuple) -> recipes.TrainForm:
        return recipes.TrainForm(**dict(zip(recipes.FORM_FIELDS, values)))

    def assemble(base_name: str, values: tuple) -> tuple[dict, str]:
        recipe = recipes.assemble_recipe(recipes.load_recipe(base_name), read_form(values), workdir)
        return recipe, recipes.recipe_yaml(recipe)

    def run_choices(selected: str) -> Any:
        return gr.update(choices=list(manager.runs), value=selected)

    @guarded(outputs=len(form) + 3, status_at=-1)
    def load_recipe(base_name: str, lang_code: str) -> tuple:
        loaded = recipes.form_from_recipe(recipes.load_recipe(base_name), new_run_name())
        values = recipes.form_values(loaded)
        values[recipes.FORM_FIELDS.index("datasets")] = gr.update(
            choices=_dataset_choices(loaded.dataset_dir, workdir), value=loaded.datasets)
        return (*values, gr.update(visible=loaded.method == "LoRA"), gr.update(visible=loaded.method == "Freeze"),
                text(lang_code, "msg_loaded", recipe=base_name))

    @guarded(outputs=4, status_at=-1)
    def change_method(method: str, lang_code: str) -> tuple:
        options = {k: v for k, v in recipes.method_defaults(method).items()
                   if k not in recipes.FORM_METHOD_ARGS.get(method, ())}
        return (gr.update(visible=method == "LoRA"), gr.update(visible=method == "Freeze"),
                recipes.dump_options(options), "")

    @guarded(outputs=2, status_at=-1)
    def refresh_datasets(dataset_dir: str, lang_code: str) -> tuple:
        return gr.update(choices=recipes.dataset_names(str(recipes.in_workdir(workdir, dataset_dir)))), ""

    @guarded(outputs=3, status_at=-1)
    def show_preview(dataset_dir: str, names: list, tokenizer: str, model_path: str, template: str, stage: str,
                     max_samples: str, lang_code: str) -> tuple:
        from lit_factory import stages
        from lit_factory.board.preview import preview_datasets

        pretrain = getattr(stages, stage).data_objective == "pretrain"
        limit = recipes.parse_optional_int("max samples", max_samples)
        summary, rendered = preview_datasets(dataset_dir, list(names or []), tokenizer or model_path, template, 3,
                                             workdir, pretrain, limit)
        return text(lang_code, "msg_preview", counts=summary), rendered, ""

    @guarded(outputs=2, status_at=-1)
    def show_recipe(base_name: str, *values: Any) -> tuple:
        recipe, yaml_text = assemble(base_name, values[:-1])
        return yaml_text, text(values[-1], "msg_recipe", path=recipes.run_dir(recipe) / "recipe.yaml")

    @guarded(outputs=4, status_at=1)
    def start(base_name: str, *values: Any) -> tuple:
        recipe, yaml_text = assemble(base_name, values[:-1])
        run = manager.launch(yaml_text, recipes.run_dir(recipe))
        return yaml_text, text(values[-1], "msg_started", run=run.name), run_choices(run.name), new_run_name()

    @guarded(outputs=1, status_at=0)
    def stop(run_name: str, lang_code: str) -> str:
        return text(lang_code, "msg_stopping", run=manager.stop(run_name).name)

    @guarded(outputs=2, status_at=0)
    def resume(run_name: str, lang_code: str) -> tuple:
        run = manager.resume(run_name)
        return text(lang_code, "msg_resumed", run=run.name), run_choices(run.name)

    @guarded(outputs=2, status_at=0)
    def watch(folder: str, lang_code: str) -> tuple:
        run = manager.watch(folder)
        return text(lang_code, "msg_watching", run=run.name), run_choices(run.name)

    @guarded(outputs=3, status_at=0)
    def monitor(run_name: str, lang_code: str) -> tuple:
        points = loss_curve(manager.get(run_name).log_dir) if run_name in manager.runs else []
        # No points: clear the plot (None), never an empty frame; once drawn empty, gradio's line plot keeps a
        # colour scale without domain and later lines get no stroke (a blank plot with scaled axes).
        frame = pd.DataFrame({"step": pd.Series([p[0] for p in points], dtype="int64"),
                              "loss": pd.Series([p[1] for p in points], dtype="float64"),
                              "series": pd.Series([p[2] for p in points], dtype="object")}) if points else None
        if run_name not in manager.runs:
            return "", "", frame
        run = manager.get(run_name)
        return progress_html(progress_summary(run), lang_code), log_tail(run), frame

    base.change(load_recipe, [base, lang], [*form, lora_row, freeze_row, status], api_name="load_recipe")
    fields["method"].change(change_method, [fields["method"], lang],
                            [lora_row, freeze_row, fields["method_options"], status], api_name=False)
    fields["dataset_dir"].submit(refresh_datasets, [fields["dataset_dir"], lang], [fields["datasets"], status],
                                 api_name="refresh_datasets")
    preview_button.click(show_preview, [fields["dataset_dir"], fields["datasets"], fields["tokenizer"],
                                        fields["model_path"], fields["template"], fields["stage"],
                                        fields["max_samples"], lang],
                         [preview_count, preview, status], api_name="preview")
    show_button.click(show_recipe, [base, *form, lang], [recipe_view, status], api_name="show_recipe")
    start_button.click(start, [base, *form, lang], [recipe_view, status, run_select, fields["run_name"]],
                       api_name="start")
    stop_button.click(stop, [run_select, lang], [status], api_name="stop")
    resume_button.click(resume, [run_select, lang], [status, run_select], api_name="resume")
    watch_button.click(watch, [watch_dir, lang], [status, run_select], api_name="watch")
    run_select.change(monitor, [run_select, lang], [progress, log_box, loss_plot], api_name="monitor")
    log_box.change(None, None, None, js=FOLLOW_LOG_END, api_name=False)
    gr.Timer(MONITOR_SECONDS).tick(monitor, [run_select, lang], [progress, log_box, loss_plot], api_name=False,
                                   show_progress="hidden")


def _dataset_choices(dataset_dir: str, workdir: Any) -> list[str]:
    from lit_factory.errors import LitFactoryError

    try:
        return recipes.dataset_names(str(recipes.in_workdir(workdir, dataset_dir)))
    except LitFactoryError:
        return []
