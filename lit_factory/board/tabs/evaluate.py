"""The Evaluate tab: batch prediction with BLEU/ROUGE (``lit-factory predict`` on ``recipes/predict/sft.yaml``,
launched like a training run) and the multiple-choice benchmark (``lit_factory.eval.choice``), shown as tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lit_factory.board import recipe as recipes
from lit_factory.board.assemble import recipe_yaml, run_dir
from lit_factory.board.fields import parse_number, parse_optional_int
from lit_factory.board.handlers import MODEL_INPUT_CHECKS, guarded, local_folder, local_path, run_output
from lit_factory.board.locales import text
from lit_factory.board.runs import RunManager
from lit_factory.board.workspace import Workspace, check_recipe_paths
from lit_factory.errors import LitFactoryError

PREDICT_RECIPE = "predict/sft.yaml"


def predict_recipe(model: str, adapter: str, tokenizer: str, dataset_dir: str, datasets: list[str], template: str,
                   max_samples: str, max_new_tokens: float, output_dir: str, run_name: str,
                   workspace: Workspace) -> dict[str, Any]:
    """``recipes/predict/sft.yaml`` with the tab's fields written in (its other values are the defaults); every
    path must lie in the board's ``workspace``."""
    recipe = recipes.load_recipe(PREDICT_RECIPE)
    if not (model or "").strip():
        raise LitFactoryError("model path: empty. Fix: give the folder of a trained model (or a run's output).")
    model_args = recipe["model"]["init_args"]["model"]
    model_args.update(path=model.strip(), adapter=(adapter or "").strip() or None)
    if (tokenizer or "").strip():
        model_args["tokenizer"] = tokenizer.strip()
    else:
        model_args.pop("tokenizer", None)
    recipe["model"]["init_args"]["generation"]["max_new_tokens"] = parse_number(
        "max new tokens", max_new_tokens, int, 1)
    data = recipe["data"]["init_args"]
    folder = workspace.path(dataset_dir, "dataset folder", "read")
    known = recipes.dataset_names(str(folder))
    missing = [name for name in datasets or [] if name not in known]
    if not datasets or missing:
        raise LitFactoryError(f"datasets: {missing or 'none chosen'} not in {folder / 'dataset_info.json'}. "
                              f"Fix: pick from {known}.")
    data.update(dataset_dir=dataset_dir, dataset=list(datasets), template=template or "auto")
    samples = parse_optional_int("max samples", max_samples)
    if samples is not None:
        data["max_samples"] = samples
    if not (run_name or "").strip() or not (output_dir or "").strip():
        raise LitFactoryError("output folder / run name: empty. Fix: give both.")
    out = Path(output_dir.strip())
    workspace.path(out / run_name.strip(), "output folder", "inside")
    recipe["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                   "init_args": {"save_dir": str(out.parent), "name": out.name,
                                                 "version": run_name.strip(), "default_hp_metric": False}}
    check_recipe_paths(recipe, workspace)
    return recipe


def metrics_table(folder: Path) -> list[list[Any]]:
    """``[metric, value]`` rows of a prediction run's ``predict_results.json`` (empty until it is written)."""
    from lit_factory.infer.predict import METRICS_FILE

    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return [[name, round(value, 4)] for name, value in metrics.items() if isinstance(value, (int, float))]


def choice_table(results: dict[str, Any]) -> list[list[Any]]:
    """``[name, accuracy %, correct, total]`` rows: categories, then the average."""
    rows = [*results["categories"].items(), ("Average", results["average"])]
    return [[name, round(100 * row["accuracy"], 2), row["correct"], row["total"]] for name, row in rows]


def build_evaluate_tab(ui: Any, manager: RunManager, lang: Any) -> None:
    """Add the Evaluate tab's components and handlers to the open ``gr.Blocks`` (inside its ``gr.Tab``)."""
    import gradio as gr

    from lit_factory.eval.choice import SAMPLE_TASK_DIR
    from lit_factory.shipped import PACKAGE_DIR

    word = ui.word
    base = recipes.load_recipe(PREDICT_RECIPE)["data"]["init_args"]
    with gr.Row():
        run_pick = ui("chat_run", gr.Dropdown([], label=word("chat_run"), allow_custom_value=True, scale=2))
        model = ui("chat_model", gr.Textbox(label=word("chat_model"), elem_id="eval_model", scale=2))
        adapter = ui("chat_adapter", gr.Textbox(label=word("chat_adapter"), scale=2))
        tokenizer = ui("tokenizer", gr.Textbox(label=word("tokenizer")))
        template = ui("template", gr.Dropdown(recipes.available_templates(), value=base.get("template", "auto"),
                                              allow_custom_value=True, label=word("template")))
    status = gr.Markdown(elem_id="eval_status")

    ui("eval_predict", gr.Markdown(f"### {word('eval_predict')}"), "value")
    with gr.Row():
        dataset_dir = ui("dataset_dir", gr.Textbox(base["dataset_dir"], label=word("dataset_dir")))
        demo = manager.workspace.path(base["dataset_dir"], "dataset folder", "read")
        datasets = ui("datasets", gr.Dropdown(recipes.dataset_names(str(demo)),
                                              value=list(base["dataset"]), multiselect=True, allow_custom_value=True,
                                              label=word("datasets")))
        max_samples = ui("max_samples", gr.Textbox("", label=word("max_samples")))
        max_new_tokens = ui("chat_max_new_tokens", gr.Number(64, precision=0, label=word("chat_max_new_tokens")))
    with gr.Row():
        output_dir = ui("output_dir", gr.Textbox("runs/predict", label=word("output_dir")))
        predict_button = ui("eval_predict_button", gr.Button(word("eval_predict_button"), variant="primary"), "value")
        results_button = ui("eval_results_button", gr.Button(word("eval_results_button")), "value")
    predict_table = ui("eval_metrics", gr.Dataframe(headers=["metric", "value"], label=word("eval_metrics"),
                                                    interactive=False))
    predict_run = ui("run_select", gr.Textbox("", label=word("run_select"), interactive=False))

    ui("eval_choice", gr.Markdown(f"### {word('eval_choice')}"), "value")
    with gr.Row():
        # Named relative to a checkout, as the recipes name shipped files (the workspace resolves it, wheel or not).
        sample_tasks = Path("lit_factory", *SAMPLE_TASK_DIR.relative_to(PACKAGE_DIR).parts).as_posix()
        task_dir = ui("eval_task_dir", gr.Textbox(sample_tasks, label=word("eval_task_dir"), scale=2))
        task = ui("eval_task", gr.Textbox("mmlu_sample", label=word("eval_task")))
        split = ui("eval_split", gr.Textbox("test", label=word("eval_split")))
        n_shot = ui("eval_n_shot", gr.Number(5, precision=0, label=word("eval_n_shot")))
        prompt_lang = ui("eval_lang", gr.Dropdown(["en", "zh"], value="en", label=word("eval_lang")))
        choice_button = ui("eval_choice_button", gr.Button(word("eval_choice_button"), variant="primary"), "value")
    choice_results = ui("eval_accuracy", gr.Dataframe(headers=["category", "accuracy %", "correct", "total"],
                                                      label=word("eval_accuracy"), interactive=False))

    @guarded(outputs=4, status_at=-1)
    def use_run(name: str, lang_code: str) -> tuple:
        return (*run_output(manager, name), "")

    @guarded(outputs=3, status_at=0)
    def predict(path: str, adapter_dir: str, tokenizer_dir: str, template_name: str, folder: str, names: list,
                samples: str, new_tokens: float, out: str, lang_code: str) -> tuple:
        recipe = predict_recipe(path, adapter_dir, tokenizer_dir, folder, list(names or []), template_name, samples,
                                new_tokens, out, time.strftime("predict-%Y%m%d-%H%M%S"), manager.workspace)
        run = manager.launch(recipe_yaml(recipe), run_dir(recipe), subcommand="predict")
        return text(lang_code, "msg_started", run=run.name), run.name, []

    @guarded(outputs=2, status_at=0)
    def results(run_name: str, lang_code: str) -> tuple:
        run = manager.get(run_name)
        rows = metrics_table(run.log_dir)
        state = run.status() if rows or run.running else run.status() + " — " + text(lang_code, "msg_no_results")
        return text(lang_code, "msg_run_status", run=run.name, status=state), rows

    @guarded(outputs=2, status_at=0)
    def choice(path: str, adapter_dir: str, tokenizer_dir: str, template_name: str, folder: str, task_name: str,
               split_name: str, shots: float, prompt_language: str, lang_code: str) -> tuple:
        import torch

        from lit_factory.data.templates import get_template
        from lit_factory.eval.choice import evaluate_choices, load_task
        from lit_factory.model.builder import ModelArgs, build_inference_model, build_tokenizer

        if not (path or "").strip():
            raise LitFactoryError("model path: empty. Fix: give a model folder or hub id, or pick a run.")
        shots = parse_number("n-shot", shots, int, 0)
        splits = (split_name,) if shots == 0 else ("dev", split_name)
        subjects = load_task(local_folder(manager, folder, "task folder"), task_name, tuple(dict.fromkeys(splits)))
        args = ModelArgs(path=local_path(manager, path), adapter=local_folder(manager, adapter_dir) or None,
                         tokenizer=local_path(manager, tokenizer_dir, "tokenizer") or None)
        tokenizer_obj = build_tokenizer(args)
        model_obj = build_inference_model(args, tokenizer_obj, torch.device("cuda" if torch.cuda.is_available()
                                                                            else "cpu"))
        scored = evaluate_choices(model_obj, tokenizer_obj, get_template(template_name or "auto", tokenizer_obj),
                                  subjects, split_name, shots, prompt_language)
        return text(lang_code, "msg_choice_done", task=task_name, n_shot=shots), choice_table(scored)

    run_pick.focus(lambda: gr.update(choices=manager.discover()), None, run_pick, api_name=False)
    run_pick.change(use_run, [run_pick, lang], [model, adapter, tokenizer, status], api_name="eval_use_run")
    model_checks = [(position, word(key), kind) for position, (key, kind) in enumerate(MODEL_INPUT_CHECKS)]
    predict_button.click(predict, [model, adapter, tokenizer, template, dataset_dir, datasets, max_samples,
                                   max_new_tokens, output_dir, lang], [status, predict_run, predict_table],
                         api_name="eval_predict", validator=manager.workspace.validator(
                             [*model_checks, (4, word("dataset_dir"), "read"), (8, word("output_dir"), "inside")]))
    results_button.click(results, [predict_run, lang], [status, predict_table], api_name="eval_results")
    choice_button.click(choice, [model, adapter, tokenizer, template, task_dir, task, split, n_shot, prompt_lang,
                                 lang], [status, choice_results], api_name="eval_choice",
                        validator=manager.workspace.validator([*model_checks, (4, word("eval_task_dir"), "read")]))
