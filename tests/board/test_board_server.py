"""The board through its API: ``gradio_client`` against a live ``lit-factory board`` on 127.0.0.1.

A recipe assembled in the page is saved unchanged and run by ``lit-factory fit``; a short run launched from the page
finishes with a loss curve; Stop ends a run with a checkpoint that Resume continues from; bad input is a message in
the page and the server keeps serving. Runs use the quickstart model (a few steps).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("gradio_client", reason="the board's API tests need gradio_client (the 'test' extra)")
pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from gradio_client import Client  # noqa: E402

from lit_factory.board.recipe import FORM_FIELDS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_board(log_path: Path, workspace: Path) -> tuple[subprocess.Popen, str]:
    """Start ``lit-factory board --workspace WORKSPACE`` and wait until it answers."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "lit_factory", "board", "--port", str(port), "--workspace",
                                str(workspace)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"board exited: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("board did not start in 120 s")


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Any:
    folder = tmp_path_factory.mktemp("board")  # the board's workspace; runs go to its runs/
    process, url = start_board(folder / "server.log", folder)
    client = Client(url, verbose=False)
    client.board_runs = folder / "runs"  # type: ignore[attr-defined]
    yield client
    process.terminate()
    process.wait(60)


def form(client: Client, recipe: str = "quickstart.yaml", **changes: Any) -> list[Any]:
    """The Train tab's values after choosing ``recipe``, with ``changes`` typed in."""
    values = client.predict(recipe, "en", api_name="/load_recipe")
    fields = dict(zip(FORM_FIELDS, values))
    fields["datasets"] = fields["datasets"]["value"]  # a dropdown update: its choices and chosen values
    fields.update(output_dir=str(client.board_runs), val_size="0", log_every_n_steps=1)
    fields.update(changes)
    return [fields[name] for name in FORM_FIELDS]


def run_value(update: Any) -> str:
    return update["value"] if isinstance(update, dict) else update


def progress(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture(scope="module")
def short_run(board) -> dict[str, Any]:
    """A 5-step quickstart run configured, shown and started through the page, waited for until it finishes."""
    values = form(board, max_steps="5", run_name="short")
    shown, show_status = board.predict("quickstart.yaml", *values, "en", api_name="/show_recipe")
    recipe_view, status, runs, next_name = board.predict("quickstart.yaml", *values, "en", api_name="/start")
    name = run_value(runs)
    wait_for(lambda: "finished" in board.predict(name, "en", api_name="/monitor")[0], 300, "the run to finish")
    return dict(name=name, run_dir=board.board_runs / "short", shown=shown, show_status=show_status,
                recipe_view=recipe_view, status=status, next_name=next_name)


@pytest.mark.slow
def test_ui_recipe_is_run_unchanged_by_fit_and_the_run_finishes_with_a_loss_curve(board, short_run):
    name, run_dir, shown = short_run["name"], short_run["run_dir"], short_run["shown"]
    assert "The recipe is valid" in short_run["show_status"]
    assert short_run["status"].startswith("Started run") and short_run["recipe_view"] == shown
    assert short_run["next_name"] != "short"  # the form offers a fresh run name for the next run
    # saved as the page showed it (the page drops the final newline)
    assert (run_dir / "recipe.yaml").read_text().rstrip("\n") == shown
    log = (run_dir / "board.log").read_text()
    assert log.startswith(f"$ lit-factory fit --config {run_dir / 'recipe.yaml'}\n")
    assert "max_steps=5` reached" in log  # `lit-factory fit` accepted the recipe and trained it to the end
    bar, tail, curve = board.predict(name, "en", api_name="/monitor")
    assert "step 5 / 5" in bar and "100%" in bar
    points = [row for row in curve["data"] if row[2] == "train/loss"]
    assert [row[0] for row in points] == [0, 1, 2, 3, 4]  # log_every_n_steps=1: one point per step
    assert all(value > 0 for _, value, _ in points)
    # no run, no points: the plot is cleared (None), not given an empty frame (which leaves later lines unstroked)
    assert board.predict(None, "en", api_name="/monitor")[2] is None
    assert (run_dir / "model.safetensors").is_file()
    # Lightning's regular checkpoint beside the stop checkpoint; no resume-from-last warning, no product tips
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "ckpt_path=None" not in log and "Tip:" not in log and "args parameter is intended" not in log


@pytest.mark.slow
def test_stop_keeps_a_checkpoint_and_resume_continues_from_it(board):
    values = form(board, max_steps="200", run_name="stoppable")
    _, status, runs, _ = board.predict("quickstart.yaml", *values, "en", api_name="/start")
    name, run_dir = run_value(runs), board.board_runs / "stoppable"
    wait_for(lambda: progress(run_dir).get("step", 0) >= 2, 300, "two training steps")
    refused = board.predict("quickstart.yaml", *form(board, max_steps="5", run_name="second"), "en",
                            api_name="/start")[1]
    assert "still training; one run at a time" in refused
    assert "Stopping run" in board.predict(name, "en", api_name="/stop")
    wait_for(lambda: "stopped" in board.predict(name, "en", api_name="/monitor")[0], 120, "the run to stop")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    import torch

    stopped_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped_at < 200
    assert "Detected KeyboardInterrupt, attempting graceful shutdown" in (run_dir / "board.log").read_text()

    status, _ = board.predict(name, "en", api_name="/resume")
    assert status.startswith("Resumed run")
    resumed = wait_for(lambda: progress(run_dir) if progress(run_dir).get("step", 0) > stopped_at else None, 300,
                       "the resumed run to train")
    assert resumed["start_step"] == stopped_at  # continued from the checkpoint, not from step 0
    assert "--ckpt_path last" in (run_dir / "board.log").read_text()
    board.predict(name, "en", api_name="/stop")
    wait_for(lambda: "stopped" in board.predict(name, "en", api_name="/monitor")[0], 120, "the resumed run to stop")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, changes, message", [
    ("sft/lora.yaml", {"model_path": "", "dataset_dir": "lit_factory/assets/demo", "datasets": ["sparrow_sft"]},
     "model path: empty"),
    ("quickstart.yaml", {"datasets": ["sparrow_sft", "no_such_data"]}, "['no_such_data'] not in"),
    ("quickstart.yaml", {"learning_rate": "three"}, "learning rate: 'three' is not a number"),
])
def test_bad_input_is_a_message_in_the_page_and_the_server_keeps_serving(board, recipe, changes, message):
    values = form(board, recipe, run_name="bad", **changes)
    for endpoint in ("/show_recipe", "/start"):
        status = board.predict(recipe, *values, "en", api_name=endpoint)[1]
        assert status.startswith("**Error:**") and message in status and "Traceback" not in status
    assert not (board.board_runs / "bad").exists()
    # and in Chinese, with the same message from the library
    assert board.predict(recipe, *values, "zh", api_name="/show_recipe")[1].startswith("**错误：**")
    assert board.predict("quickstart.yaml", "en", api_name="/load_recipe")[-1].startswith("Loaded")


@pytest.mark.slow
def test_chat_tab_streams_a_reply_from_a_runs_output(board, short_run):
    pytest.importorskip("lit_factory.infer.engine", reason="the Chat tab appears with lit_factory.infer")
    chat_args = ("", 16, 1.0, 1.0, "en")  # system prompt, max new tokens, temperature, top_p, language
    refused = board.predict("hi", [], *chat_args, api_name="/chat")
    assert refused[2] == "**Error:** no model loaded. Fix: load a model (or pick a run) first."
    model, adapter, tokenizer, status = board.predict(short_run["name"], "en", api_name="/chat_use_run")
    assert (model, adapter, status) == (str(short_run["run_dir"]), "", "")  # a full run saves a whole model
    assert board.predict(model, "", "", "chatml", "en", api_name="/chat_load").startswith("Loaded")
    from transformers import AutoTokenizer

    counter = AutoTokenizer.from_pretrained(short_run["run_dir"])
    replies = []
    for _ in range(4):  # a 5-step model may sample its end-of-turn token first; then ask again
        history = board.predict("Who are you?", [], *chat_args, api_name="/chat")[0]
        assert [turn["role"] for turn in history] == ["user", "assistant"]
        replies.append("".join(part["text"] for part in history[1]["content"]))
        if replies[-1]:
            # max_new_tokens held: 16 tokens decode to at most 16 of the vocabulary's longest token strings (re-encoding
            # the text is no measure: a random model emits byte fragments that re-encode into more tokens).
            longest = max(len(counter.decode([token_id])) for token_id in range(len(counter)))
            assert len(replies[-1]) <= 16 * longest
            break
    assert any(replies), "four sampled replies were all empty"
    unknown = board.predict("no-such-run", "en", api_name="/chat_use_run")[-1]
    assert unknown.startswith("**Error:** run 'no-such-run' is unknown")


@pytest.mark.slow
def test_evaluate_tab_scores_a_runs_output_with_both_benchmarks(board, short_run):
    pytest.importorskip("lit_factory.eval.choice", reason="the Evaluate tab appears with lit_factory.eval")
    from lit_factory.eval.choice import SAMPLE_TASK_DIR, evaluate_choices, load_task
    from lit_factory.eval.similarity import similarity_scores

    model = str(short_run["run_dir"])
    status, table = board.predict(model, "", "", "chatml", str(SAMPLE_TASK_DIR), "mmlu_sample", "test", 0, "en", "en",
                                  api_name="/eval_choice")
    assert status == "Scored mmlu_sample (0-shot)."
    # the same numbers as the library's own evaluation of that model
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_factory.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(model)
    reference = evaluate_choices(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval(), tokenizer,
                                 get_template("chatml"), load_task(SAMPLE_TASK_DIR, "mmlu_sample", ("test",)), "test", 0)
    rows = {row[0]: row[1:] for row in table["data"]}
    assert rows["Average"] == [round(100 * reference["average"]["accuracy"], 2), reference["average"]["correct"],
                               reference["average"]["total"]]

    status, run_name, _ = board.predict(model, "", "", "chatml", "lit_factory/assets/demo", ["sparrow_sft"], "4", 8,
                                        str(board.board_runs / "predict"), "en", api_name="/eval_predict")
    assert status.startswith("Started run")
    run_dir = board.board_runs.parent / run_name  # run names are relative to the workspace
    results = wait_for(lambda: board.predict(run_name, "en", api_name="/eval_results")[1]["data"], 300,
                       "predict_results.json")
    metrics = {name: value for name, value in results}
    predictions = [json.loads(line) for line in (run_dir / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and metrics["samples"] == 4
    expected = similarity_scores([p["predict"] for p in predictions], [p["label"] for p in predictions])
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-3)
    assert "lit-factory predict --config" in (run_dir / "board.log").read_text()


@pytest.mark.slow
def test_export_tab_merges_an_adapter_into_the_base(board, short_run):
    pytest.importorskip("lit_factory.model.export", reason="the Export tab appears with lit_factory.model.export")
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = str(short_run["run_dir"])
    tmp_path = board.board_runs.parent / "export-test"  # inside the workspace: the board reads and writes only there
    torch.manual_seed(0)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter); make the merge change the weights
            torch.nn.init.normal_(parameter, std=0.05)
    lora.save_pretrained(tmp_path / "adapter")
    status = board.predict(base, str(tmp_path / "adapter"), str(tmp_path / "merged"), "float32", "2GB", "en",
                           api_name="/export")
    assert status == f"Exported the merged model to {tmp_path / 'merged'}."
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                             tmp_path / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the adapter did change the model
    bad = board.predict(base, str(tmp_path / "nothing"), str(tmp_path / "m2"), "auto", "2GB", "en", api_name="/export")
    assert bad.startswith("**Error:**") and "adapter_config.json" in bad


@pytest.mark.slow
def test_panels_set_in_the_page_land_in_the_recipe_and_the_preview_command_runs_as_shown(board):
    import os

    import yaml

    values = form(board, "quickstart.yaml", run_name="panels", max_steps="4", attn_implementation="eager",
                  gradient_checkpointing=True, packing=True, optimizer="GaLore", galore_rank=4, logger="csv",
                  strategy="ddp", devices="2", neftune_alpha=5, rope_scaling="linear")
    shown, status = board.predict("quickstart.yaml", *values, "en", api_name="/show_recipe")
    assert status.startswith("The recipe is valid")
    recipe = yaml.safe_load(shown)
    model = recipe["model"]["init_args"]["model"]
    assert (model["attn_implementation"], model["gradient_checkpointing"]) == ("eager", True)
    assert model["patches"] == [
        {"class_path": "lit_factory.model.patches.RopeScaling", "init_args": {"kind": "linear", "context_length": 128}},
        {"class_path": "lit_factory.model.patches.NEFTune", "init_args": {"alpha": 5.0}}]
    assert recipe["model"]["init_args"]["optimizer"]["class_path"] == "lit_factory.optim.GaLore"
    assert recipe["model"]["init_args"]["optimizer"]["init_args"]["rank"] == 4
    assert recipe["data"]["init_args"]["packing"] is True
    assert recipe["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert (recipe["trainer"]["strategy"], recipe["trainer"]["devices"]) == ("ddp", "2")

    # The preview command runs as shown (a shell, `lit-factory` on PATH) and resolves to what the recipe says.
    command, status = board.predict("quickstart.yaml", *values, "en", api_name="/preview_command")
    assert command.startswith(f"cd {board.board_runs.parent} && lit-factory fit --config recipes/quickstart.yaml ")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = subprocess.run(["bash", "-c", command + " --print_config"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    printed = yaml.safe_load(ran.stdout)
    assert printed["model"]["init_args"]["model"]["attn_implementation"] == "eager"
    optimizer = recipe["model"]["init_args"]["optimizer"]
    printed_optimizer = printed["model"]["init_args"]["optimizer"]
    assert printed_optimizer["class_path"] == optimizer["class_path"]
    assert {key: printed_optimizer["init_args"][key] for key in optimizer["init_args"]} == optimizer["init_args"]
    assert printed["data"]["init_args"]["packing"] is True
    logger = recipe["trainer"]["logger"]
    assert printed["trainer"]["logger"]["class_path"] == logger["class_path"]
    assert {key: printed["trainer"]["logger"]["init_args"][key] for key in logger["init_args"]} == logger["init_args"]
    assert printed["trainer"]["strategy"] == "ddp"

    # Save the arguments to a YAML in the workspace, load them back: the same form.
    saved = board.predict("args/panels.yaml", "quickstart.yaml", *values, "en", api_name="/save_args")
    assert saved == f"Saved the arguments to {board.board_runs.parent / 'args' / 'panels.yaml'}."
    loaded = board.predict("args/panels.yaml", "en", api_name="/load_args")
    reloaded = dict(zip(FORM_FIELDS, loaded[1:]))
    reloaded["datasets"] = reloaded["datasets"]["value"]
    expected = dict(zip(FORM_FIELDS, values))
    for name in FORM_FIELDS:
        if name != "run_name":  # a loaded form gets a fresh run name
            same_number = isinstance(expected[name], (int, float)) and float(reloaded[name]) == float(expected[name])
            assert reloaded[name] == expected[name] or same_number, name
