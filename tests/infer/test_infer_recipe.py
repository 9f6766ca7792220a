"""`--config RECIPE` for `chat`, `serve`, `eval` and `export`: the model, adapter, template and generation settings
read from a recipe or from the config.yaml a run saved, through the CLI. References: the engine built from explicit
options, and PEFT's own merge for export."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lit_factory.infer.engine import ChatEngine, GenerationArgs
from lit_factory.model.builder import ModelArgs
from tiny_models import save_peaked_chat_model

QUESTION = [{"role": "user", "content": "Who are you?"}]


def lit_factory(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_factory", *args], input=stdin, capture_output=True, text=True,
                          timeout=600)


def chat_reply(stdout: str) -> str:
    return stdout.split("Assistant: ", 1)[1].rsplit("\nUser: ", 1)[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-recipe-base"))


@pytest.fixture(scope="module")
def lora_run(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run of the shipped SFT recipe on the tiny base (a high learning rate: the adapter must matter)."""
    runs = tmp_path_factory.mktemp("recipe-runs")
    result = lit_factory(
        "fit", "--config", "recipes/sft/lora.yaml", "--model.init_args.model.path", str(base),
        "--model.init_args.optimizer.init_args.lr", "0.05", "--data.init_args.dataset_dir", "lit_factory/assets/demo",
        "--data.init_args.dataset", "[sparrow_sft]", "--data.init_args.template", "chatml",
        "--data.init_args.max_samples", "16", "--data.init_args.cutoff_len", "64", "--trainer.precision", "32-true",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "3",
        "--trainer.accumulate_grad_batches", "1", "--trainer.logger.init_args.save_dir", str(runs))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = runs / "sft-lora" / "version_0"
    assert (run_dir / "adapter_config.json").is_file() and (run_dir / "config.yaml").is_file()
    return run_dir


@pytest.mark.slow
def test_chat_eval_export_and_serve_read_a_lora_runs_config(base: Path, lora_run: Path, tmp_path: Path) -> None:
    config = str(lora_run / "config.yaml")
    adapted = ChatEngine.load(ModelArgs(path=str(base), adapter=str(lora_run), tokenizer=str(lora_run)), "chatml",
                              GenerationArgs(6, temperature=0), "cpu")
    expected = adapted.chat(QUESTION).text
    plain = ChatEngine.load(ModelArgs(path=str(base)), "chatml", GenerationArgs(6, temperature=0), "cpu")
    assert plain.chat(QUESTION).text != expected  # the adapter changes the reply: reading it is tested below

    chat = lit_factory("chat", "--config", config, "--max_new_tokens", "6", "--temperature", "0",
                       stdin="Who are you?\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.splitlines()[0] == "Template: chatml"  # the run's data.template
    assert chat_reply(chat.stdout) == expected

    explicit = lit_factory("eval", "--model", str(base), "--adapter", str(lora_run), "--tokenizer", str(lora_run),
                           "--template", "chatml", "--n-shot", "1")
    from_run = lit_factory("eval", "--config", config, "--n-shot", "1")
    assert from_run.returncode == 0, from_run.stderr[-2000:]
    assert from_run.stdout == explicit.stdout and "Average" in from_run.stdout

    exported = lit_factory("export", "--config", config, "--output", str(tmp_path / "merged"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora_run).merge_and_unload()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-6)

    from test_serve import client, request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "lit_factory", "serve", "--config", config, "--port", str(port),
                               "--api-key", "test-key", "--model-name", "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if request(port, "GET", "/v1/models")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            time.sleep(0.5)
        reply = client(port).chat.completions.create(model="run", messages=QUESTION, max_tokens=6, temperature=0)
        assert reply.choices[0].message.content == expected
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_recipe_generation_settings_apply_and_the_command_line_wins(base: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "chat.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"class_path": "lit_factory.stages.SFT", "init_args": {
            "model": {"path": str(base)}, "generation": {"max_new_tokens": 4, "temperature": 0.0}}},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": {"template": "chatml"}},
    }))
    engine = ChatEngine.load(ModelArgs(path=str(base)), "chatml", GenerationArgs(4, temperature=0), "cpu")
    from_recipe = lit_factory("chat", "--config", str(recipe), stdin="Who are you?\n")
    assert from_recipe.returncode == 0, from_recipe.stderr[-2000:]
    assert chat_reply(from_recipe.stdout) == engine.chat(QUESTION).text
    overridden = lit_factory("chat", f"--config={recipe}", "--max_new_tokens", "2", stdin="Who are you?\n")
    assert chat_reply(overridden.stdout) == engine.chat(QUESTION, max_new_tokens=2).text


def test_recipe_without_a_saved_model_or_missing_is_a_one_line_error() -> None:
    random_init = lit_factory("chat", "--config", "recipes/quickstart.yaml")
    assert random_init.returncode == 2
    assert random_init.stderr.count("\n") == 1 and "model.config" in random_init.stderr
    assert "config.yaml" in random_init.stderr
    missing = lit_factory("export", "--config", "no/such.yaml", "--output", "x")
    assert missing.returncode == 2 and "no such file 'no/such.yaml'" in missing.stderr


def test_top_level_help_promises_what_the_tools_take() -> None:
    shown = lit_factory("--help").stdout
    assert "chat, serve, eval and export take --config RECIPE" in shown
    assert "--config RECIPE" in lit_factory("chat", "--help").stdout


def test_llamafactory_inference_yaml_is_read_through_its_translation() -> None:
    from lit_factory.infer.recipe_options import with_recipe_options

    lf = "tests/fixtures/llamafactory/inference/qwen3_lora_sft.yaml"
    args = with_recipe_options("serve", ["--config", lf, "--template", "chatml"])
    assert args[:4] == ["--model", "Qwen/Qwen3-4B-Instruct-2507", "--adapter", "saves/qwen3-4b/lora/sft"]
    # Ours come last, so they win over the file's (argparse keeps the last value of an option).
    assert args[-2:] == ["--template", "chatml"] and "--backend" in args
