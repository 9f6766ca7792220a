"""The board without a server: words in every language, recipes as the source of the form's defaults, recipe
assembly and its one-line errors, the dataset preview, the run manager's refusal of a second run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from lit_factory.board import recipe as recipes  # noqa: E402
from lit_factory.board.assemble import assemble_recipe, recipe_yaml, run_dir  # noqa: E402
from lit_factory.board.locales import LANGUAGES, labels  # noqa: E402
from lit_factory.errors import LitFactoryError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def quickstart_form(tmp_path: Path, **changes) -> recipes.TrainForm:
    form = recipes.form_from_recipe(recipes.load_recipe("quickstart.yaml"), run_name="unit")
    form.output_dir = "runs"  # relative to the workspace (tmp_path)
    for name, value in changes.items():
        setattr(form, name, value)
    return form


def test_every_label_exists_in_every_language():
    english = labels("en")
    for code in LANGUAGES:
        words = labels(code)
        assert set(words) == set(english), f"{code}: missing {set(english) - set(words)}, extra {set(words) - set(english)}"
        assert all(isinstance(value, str) and value.strip() for value in words.values())
        if code != "en":  # a copy of the English dictionary would pass the key check but translate nothing
            same = [key for key in english if words[key] == english[key] and not key.startswith(("lora_alpha",))]
            assert len(same) < 5, f"{code} leaves these untranslated: {same}"
        # every message template takes the same placeholders in every language
        for key, value in english.items():
            assert _placeholders(words[key]) == _placeholders(value), f"{code}:{key}"


def _placeholders(value: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(value) if name}


def test_language_switch_relabels_every_registered_component():
    from lit_factory.board.app import Labels, _relabel, build_app

    captured: list[Labels] = []
    original = Labels.__init__

    def spy(self, lang="en"):
        original(self, lang)
        captured.append(self)

    Labels.__init__ = spy
    try:
        build_app(REPO)
    finally:
        Labels.__init__ = original
    ui = captured[-1]
    keys = [key for key, _, _ in ui.entries]
    assert {"model_path", "learning_rate", "start_button", "stop_button", "loss_plot", "tab_train"} <= set(keys)
    for code in LANGUAGES:
        updates = _relabel(ui, code)
        assert len(updates) == len(ui.entries)
        for (key, _, sets), update in zip(ui.entries, updates):
            shown = update["label" if sets == "label" else sets]
            assert labels(code)[key] in shown


def test_form_defaults_come_from_the_recipe():
    recipe = yaml.safe_load((REPO / "recipes" / "sft" / "lora.yaml").read_text())
    form = recipes.form_from_recipe(recipes.load_recipe("sft/lora.yaml"))
    stage = recipe["model"]["init_args"]
    assert form.model_path == stage["model"]["path"]
    assert form.method == "LoRA" and form.lora_r == stage["finetuning"]["init_args"]["r"]
    assert form.lora_alpha == stage["finetuning"]["init_args"]["alpha"]
    assert float(form.learning_rate) == stage["optimizer"]["init_args"]["lr"]
    assert form.max_epochs == str(recipe["trainer"]["max_epochs"])
    assert form.batch_size == recipe["data"]["init_args"]["batch_size"]
    assert form.datasets == recipe["data"]["init_args"]["dataset"]


def test_assembled_recipe_writes_the_form_over_the_base_and_keeps_the_rest(tmp_path):
    form = quickstart_form(tmp_path, method="LoRA", lora_r=4, lora_alpha=8, lora_targets="q_proj, v_proj",
                           learning_rate="5e-4", max_steps="7", datasets=["sparrow_sft"])
    recipe = assemble_recipe(recipes.load_recipe("quickstart.yaml"), form, tmp_path)
    stage = recipe["model"]["init_args"]
    assert stage["finetuning"] == {"class_path": "lit_factory.model.LoRA", "init_args": {
        "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    assert stage["optimizer"]["init_args"]["lr"] == 5e-4
    assert stage["model"]["config"]["hidden_size"] == 128  # the inline config passes through untouched
    assert recipe["trainer"]["max_steps"] == 7 and recipe["trainer"]["gradient_clip_val"] == 1.0
    assert recipe["data"]["init_args"]["dataset"] == ["sparrow_sft"]
    assert run_dir(recipe) == Path("runs") / "unit"
    assert yaml.safe_load(recipe_yaml(recipe)) == recipe


@pytest.mark.parametrize("changes, message", [
    ({"model_path": "", "tokenizer": ""}, "tokenizer"),
    ({"model_path": "./no/such/model"}, "model path"),
    ({"datasets": ["no_such_set"]}, "no_such_set"),
    ({"datasets": []}, "datasets: none chosen"),
    ({"learning_rate": "fast"}, "learning rate: 'fast' is not a number"),
    ({"batch_size": 2.5}, "batch size"),
    ({"max_steps": "", "max_epochs": ""}, "epochs / max steps"),
    ({"method_options": "rank: 3"}, "has no option(s) ['rank']"),
    ({"stage": "Nope"}, "stage: 'Nope' is unknown"),
    ({"run_name": ""}, "run name"),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path, changes, message):
    form = quickstart_form(tmp_path, **changes)
    with pytest.raises(LitFactoryError, match=None) as raised:
        assemble_recipe(recipes.load_recipe("quickstart.yaml"), form, tmp_path)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_missing_model_path_is_refused_when_the_recipe_has_no_inline_config(tmp_path):
    form = recipes.form_from_recipe(recipes.load_recipe("sft/lora.yaml"), run_name="x")
    form.model_path, form.dataset_dir, form.datasets = "", "lit_factory/assets/demo", ["sparrow_sft"]
    with pytest.raises(LitFactoryError, match="model path: empty"):
        assemble_recipe(recipes.load_recipe("sft/lora.yaml"), form, tmp_path)


def test_preview_marks_exactly_the_template_loss_segments():
    from transformers import AutoTokenizer

    from lit_factory.board.preview import preview_datasets
    from lit_factory.data.templates import get_template

    tokenizer_dir = REPO / "lit_factory" / "assets" / "sparrow-tokenizer"
    summary, page = preview_datasets("lit_factory/assets/demo", ["sparrow_dialogues"], str(tokenizer_dir), "chatml",
                                     count=2, workdir=REPO)
    data = __import__("json").loads((REPO / "lit_factory/assets/demo/sparrow_dialogues.json").read_text())
    assert summary == f"sparrow_dialogues: {len(data)} / {len(data)}"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    first = data[0]["conversations"]
    messages = [{"role": "user" if turn["from"] == "human" else "assistant", "content": turn["value"]} for turn in first]
    segments = get_template("chatml", tokenizer).render(messages, None, tokenizer.bos_token or "", tokenizer.eos_token or "")
    import html as html_lib

    for text, loss in segments:
        tag = '<mark class="loss" title="loss">' if loss else "<span>"
        assert tag + html_lib.escape(text) in page


def test_preview_count_honours_max_samples_as_the_pipeline_does():
    from lit_factory.board.preview import preview_datasets
    from lit_factory.data.datamodule import DataModule

    tokenizer_dir = str(REPO / "lit_factory" / "assets" / "sparrow-tokenizer")
    summary, page = preview_datasets("lit_factory/assets/demo", ["sparrow_sft"], tokenizer_dir, "chatml", count=5,
                                     workdir=REPO, max_samples=3)
    module = DataModule("sparrow_sft", dataset_dir=str(REPO / "lit_factory/assets/demo"), tokenizer=tokenizer_dir,
                        template="chatml", max_samples=3, shuffle=False)
    module.setup()
    assert summary == f"sparrow_sft: {len(module.train_set)} / 3" and len(module.train_set) == 3
    assert page.count('<pre class="sample">') == 3


def test_a_second_launch_while_one_runs_is_refused(tmp_path):
    import subprocess

    from lit_factory.board.runs import Run, RunManager

    manager = RunManager(tmp_path)
    # A stand-in for a training process: the refusal must not depend on what the first run trains.
    busy = Run("busy", tmp_path / "busy", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    manager.runs["busy"] = busy
    try:
        with pytest.raises(LitFactoryError, match="'busy' is still training; one run at a time"):
            manager.launch("x: 1\n", tmp_path / "second")
        assert not (tmp_path / "second").exists()
    finally:
        busy.process.kill()
        busy.process.wait()
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "recipe.yaml").write_text("x: 1\n")
    with pytest.raises(LitFactoryError, match="already holds a run"):
        manager.launch("x: 2\n", tmp_path / "done")
    assert (tmp_path / "done" / "recipe.yaml").read_text() == "x: 1\n"


def test_chat_reply_streams_piece_by_piece_into_the_history(tmp_path):
    pytest.importorskip("lit_factory.infer.engine", reason="the Chat tab appears with lit_factory.infer")
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lit_factory.board.tabs.chat import stream_reply
    from lit_factory.infer.engine import ChatEngine
    from lit_factory.model.builder import ModelArgs

    tokenizer_dir = REPO / "lit_factory" / "assets" / "sparrow-tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    engine = ChatEngine.load(ModelArgs(path=str(tmp_path / "model")), "chatml", device="cpu")
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    updates = list(stream_reply(engine, earlier, "Who are you?", "be brief", max_new_tokens=12, temperature=0))
    reference = engine.chat([*earlier, {"role": "user", "content": "Who are you?"}], "be brief",
                            max_new_tokens=12, temperature=0)
    assert updates[-1][:3] == [*earlier, {"role": "user", "content": "Who are you?"}]
    assert updates[-1][3] == {"role": "assistant", "content": reference.text}
    replies = [update[3]["content"] for update in updates]
    # a random model's greedy reply (seeded: 12 tokens of noise) arrives in several pieces, each extending the last
    assert reference.text and len(updates) >= 2 and all(b.startswith(a) for a, b in zip(replies, replies[1:]))


def test_runs_started_from_the_cli_are_offered_to_chat_evaluate_and_export(tmp_path):
    import yaml

    from lit_factory.board.handlers import run_output
    from lit_factory.board.runs import RunManager

    # What `lit-factory fit` leaves: LightningCLI's config.yaml beside the saved adapter (or model).
    cli_run = tmp_path / "runs" / "sft-lora" / "version_0"
    (cli_run / "checkpoints").mkdir(parents=True)
    (cli_run / "adapter_config.json").write_text("{}")
    (cli_run / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"init_args": {"model": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}}}}))
    full_run = tmp_path / "runs" / "quickstart" / "version_3"
    full_run.mkdir(parents=True)
    (full_run / "config.json").write_text("{}")
    (full_run / "config.yaml").write_text("model: {}\n")
    (full_run / ".saving").mkdir()  # a staging folder a kill left behind is no run
    (full_run / ".saving" / "config.json").write_text("{}")
    (tmp_path / "runs" / "exported").mkdir()
    (tmp_path / "runs" / "exported" / "config.json").write_text("{}")  # a bare model folder, not a run

    manager = RunManager(tmp_path)
    assert manager.discover() == ["runs/quickstart/version_3", "runs/sft-lora/version_0"]
    assert run_output(manager, "runs/sft-lora/version_0") == ("Qwen/Qwen2.5-0.5B-Instruct", str(cli_run), "")
    assert run_output(manager, "runs/quickstart/version_3") == (str(full_run), "", "")
