"""The `lit-factory` command: fast help, one-line errors with status 2, recipes run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_factory.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
QUICKSTART = "recipes/quickstart.yaml"
TINY_QWEN2 = json.dumps(dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_factory", *args], capture_output=True, text=True, timeout=600)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("lit-factory: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from lit_factory.cli import main; main(['--help']); "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'peft') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "fit" in result.stdout and result.stdout.strip().endswith("[]")


def test_unknown_subcommand_and_missing_config_exit_2_with_one_line(capsys):
    assert main(["finetune"]) == 2
    assert "unknown subcommand 'finetune'" in one_line_error(capsys.readouterr().err)
    assert main(["fit", "--config", "recipes/nope.yaml"]) == 2
    assert "recipes/nope.yaml" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("override, expected", [
    (["--trainer.max_stepz", "5"], "max_stepz"),
    (["--trainer.max_steps", "five"], "max_steps"),
    (["--model.init_args.lr_schedule", "cosinus"], "lr_schedule"),
    (["--model.init_args.finetuning.init_args.rank", "8"], "rank"),
])
def test_bad_keys_and_types_exit_2_with_one_line(capsys, override, expected):
    assert main(["fit", "--config", QUICKSTART, *override]) == 2
    assert expected in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("option", ["rope_scaling", "shift_attn", "neftune_alpha", "fast_lora", "quantization"])
def test_flags_that_became_parts_say_the_new_form_and_it_parses(capsys, tmp_path, option):
    import yaml

    from lit_factory.lightning_cli import _QUANTIZATION, MOVED_MODEL_OPTIONS

    old = {"rope_scaling": "linear", "shift_attn": True, "neftune_alpha": 5.0, "fast_lora": True, "quantization": "nf4"}
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"init_args": {"model": {option: old[option]}}}}))
    assert main(["fit", "--config", QUICKSTART, "--config", str(recipe)]) == 2
    error = one_line_error(capsys.readouterr().err)
    new_form = _QUANTIZATION if option == "quantization" else MOVED_MODEL_OPTIONS[option]
    assert f"model.init_args.model.{option}:" in error and f"`{new_form}`" in error
    # The form the message suggests is what the parser takes.
    recipe.write_text(yaml.safe_dump({"model": {"init_args": {"model": yaml.safe_load(new_form)}}}))
    assert main(["fit", "--config", QUICKSTART, "--config", str(recipe), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["model"]
    assert printed["quantization" if option == "quantization" else "patches"]


def test_user_errors_raised_while_running_exit_2_with_one_line(capsys, tmp_path):
    code = main(["fit", "--config", QUICKSTART, "--data.init_args.dataset", "[no_such_set]",
                 "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert code == 2
    assert "no_such_set" in one_line_error(capsys.readouterr().err)
    # Raised inside a constructor that jsonargparse calls (and would otherwise wrap in its own report).
    assert main(["fit", "--config", QUICKSTART, "--model.init_args.model.path", "some/model"]) == 2
    assert "exactly one of `model.path`" in one_line_error(capsys.readouterr().err)


def test_print_config_applies_dotted_overrides(capsys):
    assert main(["fit", "--config", QUICKSTART, "--trainer.max_steps", "7",
                 "--model.init_args.finetuning", "lit_factory.model.LoRA", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "class_path: lit_factory.model.LoRA" in printed and "r: 8" in printed


def read_scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_quickstart_end_to_end_reduced(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_cli("fit", "--config", QUICKSTART, "--trainer.max_steps", "60", "--trainer.val_check_interval",
                     "30", "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "quickstart" / "version_0"
    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    losses = read_scalars(run_dir, "train/loss")
    assert len(losses) >= 10 and losses[-1] < losses[0] - 1.0
    assert read_scalars(run_dir, "train/lr") and read_scalars(run_dir, "train/tokens_per_sec")
    assert read_scalars(run_dir, "val/perplexity")

    # The Hugging Face export and the Lightning checkpoint hold the same trained weights.
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # saved when training ends
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    # The saved folder pairs the tokenizer with a qwen2 config.json; it must still tokenize as in training.
    shipped = AutoTokenizer.from_pretrained("lit_factory/assets/sparrow-tokenizer")
    for text in ("What is two plus two? 4", "  spaces\n\nand 123", "<|im_start|>user\nhi<|im_end|>\n"):
        assert tokenizer(text)["input_ids"] == shipped(text)["input_ids"]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=5, do_sample=False).shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_quickstart_learns_its_demo_answers(tmp_path):
    """The full quickstart: the saved model answers training questions word for word (plain transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_cli("fit", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "quickstart" / "version_0"
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    rows = json.loads(Path("lit_factory/assets/demo/sparrow_sft.json").read_text())
    correct = 0
    for row in rows[:20]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        correct += tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == row["output"]
    assert correct >= 15, f"only {correct}/20 training answers reproduced"


@pytest.mark.parametrize("recipe, datasets, extra", [
    ("recipes/sft/lora.yaml", "[alpaca_en_demo,identity]", ["--data.init_args.template", "qwen"]),
    ("recipes/pretrain/full.yaml", "[c4_demo]", []),
])
def test_recipes_run_llamafactory_demo_data(tmp_path, recipe, datasets, extra):
    tokenizer, data_dir = SHARED / "tokenizers" / "qwen2.5-instruct", SHARED / "peer-data" / "llamafactory"
    if not data_dir.exists():
        pytest.skip(f"reference data not found: {data_dir}")
    # A second --config layers a tiny random model over the recipe's hub model (YAML null clears `path`).
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(json.dumps({"model": {"init_args": {"model": {
        "path": None, "config": json.loads(TINY_QWEN2), "tokenizer": str(tokenizer)}}}}))
    result = run_cli(
        "fit", "--config", recipe, "--config", str(overlay), "--trainer.precision", "32-true", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1", "--trainer.accumulate_grad_batches", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.dataset_dir", str(data_dir), "--data.init_args.dataset", datasets,
        "--data.init_args.max_samples", "24", "--data.init_args.cutoff_len", "256", *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next(tmp_path.glob("*/version_0"))
    assert all(loss == loss and loss > 0 for loss in read_scalars(run_dir, "train/loss"))
    saved = {p.name for p in run_dir.iterdir()}
    assert "adapter_model.safetensors" in saved if "lora" in recipe else "model.safetensors" in saved


def test_fit_resumes_from_a_checkpoint_file(tmp_path):
    common = ["fit", "--config", QUICKSTART, "--trainer.val_check_interval", "2",
              "--trainer.logger.init_args.save_dir", str(tmp_path)]
    first = run_cli(*common, "--trainer.max_steps", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = next((tmp_path / "quickstart" / "version_0" / "checkpoints").glob("*.ckpt"))
    resumed = run_cli(*common, "--trainer.max_steps", "6", "--ckpt_path", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(next((tmp_path / "quickstart" / "version_1" / "checkpoints").glob("*.ckpt")),
                      weights_only=True)["global_step"] == 6
