"""The Train tab: a recipe form with typed panels, the recipe it assembles (and the equivalent command), saved
arguments, launch / stop / resume, and the run monitor."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from lit_factory.board import panels
from lit_factory.board import recipe as recipes
from lit_factory.board.assemble import RECIPE_HEADER, assemble_recipe, recipe_yaml, run_dir
from lit_factory.board.command import fit_command
from lit_factory.board.fields import dump_options, parse_optional_int
from lit_factory.board.locales import text
from lit_factory.board.runs import RunManager, log_tail, loss_curve, progress_summary
from lit_factory.board.workspace import folders_with
from lit_factory.errors import LitFactoryError
from lit_factory.io import write_text_atomically

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

    from lit_factory.board.handlers import guarded

    workspace = manager.workspace
    start_form = recipes.form_from_recipe(recipes.load_recipe(default_recipe, workspace), new_run_name())
    start_values = dict(zip(recipes.FORM_FIELDS, recipes.form_values(start_form)))
    word = ui.word
    fields: dict[str, Any] = {}

    def field(name: str, component: Any, key: str | None = None) -> Any:
        fields[name] = ui(key or name, component)
        return component

    def model_choices() -> list[str]:
        return [*folders_with(workspace, "config.json"), *recipes.hub_ids_in_recipes()]

    base = ui("base_recipe", gr.Dropdown(recipes.list_recipes(), value=default_recipe, label=word("base_recipe"),
                                         allow_custom_value=True, elem_id="base_recipe"))  # or a saved recipe
    with gr.Row():
        field("model_path", gr.Dropdown(model_choices(), value=start_form.model_path, label=word("model_path"),
                                        allow_custom_value=True, elem_id="model_path", scale=3))
        field("tokenizer", gr.Textbox(start_form.tokenizer, label=word("tokenizer"), elem_id="tokenizer", scale=2))
        field("template", gr.Dropdown(recipes.available_templates(), value=start_form.template, allow_custom_value=True,
                                      label=word("template"), elem_id="template"))
        field("adapter", gr.Dropdown(folders_with(workspace, "adapter_config.json"), value=start_form.adapter,
                                     allow_custom_value=True, label=word("adapter"), elem_id="adapter", scale=2))
    with ui("panel_model", gr.Accordion(word("panel_model"), open=True, elem_id="panel_model")):
        with gr.Row():
            field("quantization", gr.Dropdown(panels.quantizations(), value=start_form.quantization,
                                              label=word("quantization"), elem_id="quantization"))
            field("attn_implementation", gr.Dropdown(panels.attentions(), value=start_form.attn_implementation,
                                                     label=word("attn_implementation"), elem_id="attn_implementation"))
            field("rope_scaling", gr.Dropdown(panels.rope_scalings(), value=start_form.rope_scaling,
                                              label=word("rope_scaling"), elem_id="rope_scaling"))
            field("neftune_alpha", gr.Number(start_form.neftune_alpha, label=word("neftune_alpha"), minimum=0,
                                             elem_id="neftune_alpha"))
            field("shift_attn", gr.Checkbox(start_form.shift_attn, label=word("shift_attn"), elem_id="shift_attn"))
            # Liger's Triton kernels run on CUDA only: offered where liger-kernel is installed.
            field("liger_kernel", gr.Checkbox(start_form.liger_kernel, label=word("liger_kernel"),
                                              visible=panels.liger_available() or start_form.liger_kernel,
                                              elem_id="liger_kernel"))
            field("gradient_checkpointing", gr.Checkbox(start_form.gradient_checkpointing,
                                                        label=word("gradient_checkpointing"),
                                                        elem_id="gradient_checkpointing"))
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
    stage_rows = {}
    for stage_name, args in panels.STAGE_PANELS.items():
        row = gr.Row(visible=start_form.stage == stage_name, elem_id=f"panel_{stage_name.lower()}")
        with row as stage_rows[stage_name]:
            for arg in args:
                name = panels.panel_field(stage_name, arg)
                field(name, _stage_component(gr, stage_name, arg, start_values[name], word(f"arg_{arg}"), name),
                      f"arg_{arg}")
    with gr.Row():
        field("method_options", gr.Textbox(start_form.method_options, label=word("method_options"), lines=2))
        field("stage_options", gr.Textbox(start_form.stage_options, label=word("stage_options"), lines=2))
    with gr.Row():
        field("dataset_dir", gr.Textbox(start_form.dataset_dir, label=word("dataset_dir"), elem_id="dataset_dir"))
        field("datasets", gr.Dropdown(_dataset_choices(start_form.dataset_dir, workspace), value=start_form.datasets,
                                      multiselect=True, allow_custom_value=True, label=word("datasets"),
                                      elem_id="datasets", scale=2))
        field("packing", gr.Checkbox(start_form.packing, label=word("packing"), elem_id="packing", scale=0))
        preview_button = ui("preview_button", gr.Button(word("preview_button"), scale=0), "value")
    preview_count = ui("preview_count", gr.Textbox(label=word("preview_count"), interactive=False))
    preview = gr.HTML()
    with gr.Row():
        field("optimizer", gr.Dropdown(list(panels.OPTIMIZERS), value=start_form.optimizer, allow_custom_value=True,
                                       label=word("optimizer"), elem_id="optimizer"))
        field("learning_rate", gr.Textbox(start_form.learning_rate, label=word("learning_rate"),
                                          elem_id="learning_rate"))
        field("lr_schedule", gr.Dropdown(recipes.LR_SCHEDULES, value=start_form.lr_schedule,
                                         label=word("lr_schedule")))
        field("warmup_steps", gr.Textbox(start_form.warmup_steps, label=word("warmup_steps")))
        field("max_epochs", gr.Textbox(start_form.max_epochs, label=word("max_epochs"), elem_id="max_epochs"))
        field("max_steps", gr.Textbox(start_form.max_steps, label=word("max_steps"), elem_id="max_steps"))
    with gr.Row(visible=start_form.optimizer == "GaLore", elem_id="panel_galore") as galore_row:
        field("galore_rank", gr.Number(start_form.galore_rank, precision=0, label=word("galore_rank"),
                                       elem_id="galore_rank"))
        field("galore_update_interval", gr.Number(start_form.galore_update_interval, precision=0,
                                                  label=word("galore_update_interval")))
        field("galore_scale", gr.Number(start_form.galore_scale, label=word("galore_scale")))
        field("galore_target_modules", gr.Textbox(start_form.galore_target_modules,
                                                  label=word("galore_target_modules")))
    with gr.Row(visible=start_form.optimizer == "BAdam", elem_id="panel_badam") as badam_row:
        field("badam_switch_every", gr.Number(start_form.badam_switch_every, precision=0,
                                              label=word("badam_switch_every"), elem_id="badam_switch_every"))
        field("badam_order", gr.Dropdown(panels.literal_choices(panels.OPTIMIZERS["BAdam"], "order"),
                                         value=start_form.badam_order, label=word("badam_order")))
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
        field("devices", gr.Textbox(start_form.devices, label=word("devices"), elem_id="devices"))
        field("strategy", gr.Dropdown(panels.strategies(), value=start_form.strategy, label=word("strategy"),
                                      elem_id="strategy"))
        field("logger", gr.Dropdown(list(panels.LOGGERS), value=start_form.logger, label=word("logger"),
                                    elem_id="logger"))
    with gr.Row():  # wide: a refused path's message shows on the field
        field("output_dir", gr.Textbox(start_form.output_dir, label=word("output_dir"), elem_id="output_dir",
                                       scale=3))
        field("run_name", gr.Textbox(start_form.run_name, label=word("run_name"), elem_id="run_name"))
    form = [fields[name] for name in recipes.FORM_FIELDS]
    with gr.Row():
        args_path = ui("args_path", gr.Textbox("board-args.yaml", label=word("args_path"), elem_id="args_path",
                                               scale=2))
        save_button = ui("save_button", gr.Button(word("save_button"), elem_id="save_button"), "value")
        load_button = ui("load_button", gr.Button(word("load_button"), elem_id="load_button"), "value")
    with gr.Row():
        show_button = ui("show_button", gr.Button(word("show_button"), elem_id="show_button"), "value")
        command_button = ui("command_button", gr.Button(word("command_button"), elem_id="command_button"), "value")
        start_button = ui("start_button", gr.Button(word("start_button"), variant="primary", elem_id="start_button"),
                          "value")
    status = gr.Markdown(elem_id="status")
    command_view = ui("command", gr.Code(language="shell", label=word("command"), elem_id="command"))
    recipe_view = ui("recipe_yaml", gr.Code(language="yaml", label=word("recipe_yaml"), elem_id="recipe_yaml"))

    ui("monitor", gr.Markdown(f"### {word('monitor')}"), "value")
    with gr.Row():
        run_select = ui("run_select", gr.Dropdown([], label=word("run_select"), elem_id="run_select", scale=2,
                                                  allow_custom_value=True))  # the manager checks the name
        stop_button = ui("stop_button", gr.Button(word("stop_button"), variant="stop", elem_id="stop_button"), "value")
        resume_button = ui("resume_button", gr.Button(word("resume_button"), elem_id="resume_button"), "value")
    with gr.Row():
        watch_dir = ui("watch_dir", gr.Textbox(label=word("watch_dir"), scale=2, elem_id="watch_dir"))
        watch_button = ui("watch_button", gr.Button(word("watch_button")), "value")
    progress = gr.HTML(elem_id="progress")
    with gr.Row():
        loss_plot = ui("loss_plot", gr.LinePlot(x="step", y="loss", color="series", label=word("loss_plot"),
                                                color_map=LOSS_COLORS, elem_id="loss_plot", height=300))
        log_box = ui("log", gr.Textbox(label=word("log"), lines=14, max_lines=14, autoscroll=True, elem_id="log"))

    # ---- handlers ----------------------------------------------------------------------------------------------
    visibility_rows = [lora_row, freeze_row, *stage_rows.values(), galore_row, badam_row]

    def visibility(form_: recipes.TrainForm) -> list[Any]:
        return [gr.update(visible=form_.method == "LoRA"), gr.update(visible=form_.method == "Freeze"),
                *(gr.update(visible=form_.stage == name) for name in stage_rows),
                gr.update(visible=form_.optimizer == "GaLore"), gr.update(visible=form_.optimizer == "BAdam")]

    def assemble(base_name: str, values: tuple) -> tuple[dict, str, dict]:
        """The run's recipe (checked by the trainer CLI's parser), its YAML, and the base recipe it started from."""
        base_recipe = recipes.load_recipe(base_name, workspace)
        recipe = assemble_recipe(base_recipe, recipes.read_form(values), workspace)
        return recipe, recipe_yaml(recipe), base_recipe

    def run_choices(selected: str) -> Any:
        return gr.update(choices=list(manager.runs), value=selected)

    def filled(loaded: recipes.TrainForm) -> list[Any]:
        values = recipes.form_values(loaded)
        values[recipes.FORM_FIELDS.index("datasets")] = gr.update(
            choices=_dataset_choices(loaded.dataset_dir, workspace), value=loaded.datasets)
        return [*values, *visibility(loaded)]

    @guarded(outputs=len(form) + len(visibility_rows) + 1, status_at=-1)
    def load_recipe(base_name: str, lang_code: str) -> tuple:
        loaded = recipes.form_from_recipe(recipes.load_recipe(base_name, workspace), new_run_name())
        return (*filled(loaded), text(lang_code, "msg_loaded", recipe=base_name))

    @guarded(outputs=4, status_at=-1)
    def change_method(method: str, lang_code: str) -> tuple:
        options = {k: v for k, v in recipes.method_defaults(method).items()
                   if k not in recipes.FORM_METHOD_ARGS.get(method, ())}
        return (gr.update(visible=method == "LoRA"), gr.update(visible=method == "Freeze"),
                dump_options(options), "")

    def change_stage(stage: str) -> list[Any]:
        return [gr.update(visible=stage == name) for name in stage_rows]

    def change_optimizer(name: str) -> list[Any]:
        return [gr.update(visible=name == "GaLore"), gr.update(visible=name == "BAdam")]

    @guarded(outputs=2, status_at=-1)
    def refresh_datasets(dataset_dir: str, lang_code: str) -> tuple:
        folder = workspace.path(dataset_dir, "dataset folder", "read")
        return gr.update(choices=recipes.dataset_names(str(folder))), ""

    @guarded(outputs=3, status_at=-1)
    def show_preview(dataset_dir: str, names: list, tokenizer: str, model_path: str, template: str, stage: str,
                     max_samples: str, lang_code: str) -> tuple:
        from lit_factory.board.preview import preview_datasets

        pretrain = not recipes.stage_class(stage).data_objective.uses_template  # plain text, as PreTrain reads
        limit = parse_optional_int("max samples", max_samples)
        summary, rendered = preview_datasets(dataset_dir, list(names or []), tokenizer or model_path, template, 3,
                                             workspace, pretrain, limit)
        return text(lang_code, "msg_preview", counts=summary), rendered, ""

    @guarded(outputs=2, status_at=-1)
    def show_recipe(base_name: str, *values: Any) -> tuple:
        recipe, yaml_text, _ = assemble(base_name, values[:-1])
        return yaml_text, text(values[-1], "msg_recipe", path=run_dir(recipe) / "recipe.yaml")

    @guarded(outputs=2, status_at=-1)
    def show_command(base_name: str, *values: Any) -> tuple:
        recipe, _, base_recipe = assemble(base_name, values[:-1])
        command = fit_command(base_name, base_recipe, recipe, workspace.root)
        return command, text(values[-1], "msg_command")

    @guarded(outputs=4, status_at=1)
    def start(base_name: str, *values: Any) -> tuple:
        recipe, yaml_text, _ = assemble(base_name, values[:-1])
        run = manager.launch(yaml_text, run_dir(recipe))
        return yaml_text, text(values[-1], "msg_started", run=run.name), run_choices(run.name), new_run_name()

    @guarded(outputs=1, status_at=0)
    def save_args(path: str, base_name: str, *values: Any) -> str:
        _, yaml_text, _ = assemble(base_name, values[:-1])
        saved = save_recipe(workspace, path, yaml_text)
        return text(values[-1], "msg_saved", path=saved)

    @guarded(outputs=len(form) + len(visibility_rows) + 2, status_at=-1)
    def load_args(path: str, lang_code: str) -> tuple:
        saved = workspace.path((path or "").strip(), "arguments file", "inside")
        loaded = recipes.form_from_recipe(recipes.load_recipe(str(saved), workspace), new_run_name())
        return (gr.update(value=path), *filled(loaded), text(lang_code, "msg_loaded", recipe=path))

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

    # Paths in the form are checked against the workspace before a handler runs: a refusal is a 422 from the API
    # and a message on the field in the page (gradio validators).
    form_checks = [(1 + recipes.FORM_FIELDS.index(name), word(key), kind) for name, key, kind in FORM_PATHS]
    recipe_validator = workspace.validator([(0, word("base_recipe"), "read"), *form_checks])
    base.change(load_recipe, [base, lang], [*form, *visibility_rows, status], api_name="load_recipe",
                validator=workspace.validator([(0, word("base_recipe"), "read")]))
    fields["method"].change(change_method, [fields["method"], lang],
                            [lora_row, freeze_row, fields["method_options"], status], api_name=False)
    fields["stage"].change(change_stage, fields["stage"], list(stage_rows.values()), api_name=False)
    fields["optimizer"].change(change_optimizer, fields["optimizer"], [galore_row, badam_row], api_name=False)
    fields["model_path"].focus(lambda: gr.update(choices=model_choices()), None, fields["model_path"], api_name=False)
    fields["adapter"].focus(lambda: gr.update(choices=folders_with(workspace, "adapter_config.json")), None,
                            fields["adapter"], api_name=False)
    fields["dataset_dir"].submit(refresh_datasets, [fields["dataset_dir"], lang], [fields["datasets"], status],
                                 api_name="refresh_datasets",
                                 validator=workspace.validator([(0, word("dataset_dir"), "read")]))
    preview_inputs = [fields["dataset_dir"], fields["datasets"], fields["tokenizer"], fields["model_path"],
                      fields["template"], fields["stage"], fields["max_samples"], lang]
    preview_button.click(show_preview, preview_inputs, [preview_count, preview, status], api_name="preview",
                         validator=workspace.validator([(0, word("dataset_dir"), "read"), None,
                                                        (2, word("tokenizer"), "model"),
                                                        (3, word("model_path"), "model"),
                                                        (4, word("template"), "read")]))
    show_button.click(show_recipe, [base, *form, lang], [recipe_view, status], api_name="show_recipe",
                      validator=recipe_validator)
    command_button.click(show_command, [base, *form, lang], [command_view, status], api_name="preview_command",
                         validator=recipe_validator)
    start_button.click(start, [base, *form, lang], [recipe_view, status, run_select, fields["run_name"]],
                       api_name="start", validator=recipe_validator)
    save_button.click(save_args, [args_path, base, *form, lang], status, api_name="save_args",
                      validator=workspace.validator([
                          (0, word("args_path"), "inside"), (1, word("base_recipe"), "read"),
                          *((position + 1, what, kind) for position, what, kind in form_checks)]))
    load_button.click(load_args, [args_path, lang], [base, *form, *visibility_rows, status], api_name="load_args",
                      validator=workspace.validator([(0, word("args_path"), "inside")]))
    stop_button.click(stop, [run_select, lang], [status], api_name="stop")
    resume_button.click(resume, [run_select, lang], [status, run_select], api_name="resume")
    watch_button.click(watch, [watch_dir, lang], [status, run_select], api_name="watch",
                       validator=workspace.validator([(0, word("watch_dir"), "inside")]))
    run_select.change(monitor, [run_select, lang], [progress, log_box, loss_plot], api_name="monitor")
    log_box.change(None, None, None, js=FOLLOW_LOG_END, api_name=False)
    gr.Timer(MONITOR_SECONDS).tick(monitor, [run_select, lang], [progress, log_box, loss_plot], api_name=False,
                                   show_progress="hidden")


# Form fields that name paths: (field, locale key of its label, workspace kind).
FORM_PATHS = [("model_path", "model_path", "model"), ("tokenizer", "tokenizer", "model"), ("adapter", "adapter", "read"),
              ("template", "template", "read"), ("dataset_dir", "dataset_dir", "read"),
              ("output_dir", "output_dir", "inside"), ("ppo_reward_model", "arg_reward_model", "read")]


def _stage_component(gr: Any, stage: str, arg: str, value: Any, label: str, elem_id: str) -> Any:
    """The field of a stage argument, by its annotation: a dropdown, checkbox, number or text box."""
    kind = panels.stage_arg_kind(stage, arg)
    if kind == "choice":
        return gr.Dropdown(panels.stage_arg_choices(stage, arg), value=value, label=label, elem_id=elem_id)
    if kind == "bool":
        return gr.Checkbox(bool(value), label=label, elem_id=elem_id)
    if kind in ("int", "float"):
        return gr.Number(value, label=label, precision=0 if kind == "int" else None, elem_id=elem_id)
    return gr.Textbox("" if value is None else str(value), label=label, elem_id=elem_id)


def save_recipe(workspace: Any, path: str, yaml_text: str) -> Path:
    """Write the form's recipe to ``path`` in the workspace, atomically; a file there that the board did not write
    is never overwritten."""
    if not (path or "").strip():
        raise LitFactoryError("arguments file: empty. Fix: give a file name such as board-args.yaml.")
    target = workspace.path(path.strip(), "arguments file", "inside")
    if target.suffix not in (".yaml", ".yml"):
        raise LitFactoryError(f"arguments file: {path!r} must end in .yaml. Fix: e.g. board-args.yaml.")
    if target.exists() and not target.read_text(encoding="utf-8", errors="replace").startswith(RECIPE_HEADER):
        raise LitFactoryError(f"arguments file: {target} exists and was not written by the board. Fix: choose "
                              "another name.")
    return write_text_atomically(target, yaml_text)


def _dataset_choices(dataset_dir: str, workspace: Any) -> list[str]:
    try:
        return recipes.dataset_names(str(workspace.path(dataset_dir, "dataset folder", "read")))
    except LitFactoryError:
        return []
