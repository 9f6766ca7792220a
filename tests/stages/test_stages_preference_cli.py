"""Preference recipes through `lit-factory fit` on LLaMA-Factory's demo data (dpo_en_demo, kto_en_demo): each runs
with a tiny random model, DPO raises the reward margin, and data of the wrong kind stops with a one-line error."""

import json
from pathlib import Path

import pytest

from lit_factory.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "peer-data" / "llamafactory"
TINY_QWEN2 = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)

pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"reference data not found: {DATA}")


def tiny_overlay(tmp_path: Path, tokenizer: str) -> str:
    """A second --config that swaps the recipe's hub model for a tiny random one (YAML null clears `path`)."""
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(json.dumps({"model": {"init_args": {"model": {
        "path": None, "config": TINY_QWEN2, "tokenizer": tokenizer}}}}))
    return str(overlay)


def fit(tmp_path: Path, recipe: str, tokenizer: str, *extra: str) -> int:
    return main([
        "fit", "--config", recipe, "--config", tiny_overlay(tmp_path, tokenizer), "--trainer.precision", "32-true",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.accumulate_grad_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.dataset_dir", str(DATA), "--data.init_args.val_size", "0", *extra,
    ])


def read_scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


@pytest.mark.parametrize("recipe, metric, saved", [
    ("recipes/reward/lora.yaml", "train/accuracy", {"adapter_model.safetensors", "value_head.safetensors"}),
    ("recipes/dpo/lora.yaml", "train/rewards/margin", {"adapter_model.safetensors"}),
    ("recipes/dpo/full.yaml", "train/rewards/margin", {"model.safetensors"}),
    ("recipes/kto/lora.yaml", "train/kl", {"adapter_model.safetensors"}),
    ("recipes/orpo/lora.yaml", "train/log_odds_ratio", {"adapter_model.safetensors"}),
    ("recipes/simpo/lora.yaml", "train/rewards/margin", {"adapter_model.safetensors"}),
])
def test_preference_recipes_run_llamafactory_demo_data(tmp_path, recipe, metric, saved):
    code = fit(tmp_path, recipe, str(SHARED / "tokenizers" / "qwen2.5-instruct"), "--trainer.max_steps", "2",
               "--data.init_args.max_samples", "4", "--data.init_args.cutoff_len", "64",
               "--data.init_args.batch_size", "2", "--data.init_args.template", "qwen")
    assert code == 0
    run_dir = next(tmp_path.glob("*/version_0"))
    losses = read_scalars(run_dir, "train/loss")
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
    assert len(read_scalars(run_dir, metric)) == 2
    assert saved <= {p.name for p in run_dir.iterdir()}


def test_dpo_raises_the_reward_margin_on_the_demo_pairs(tmp_path):
    """A tiny model (the repository's small-vocabulary Sparrow tokenizer keeps it fast) on 8 dpo_en_demo pairs."""
    code = fit(tmp_path, "recipes/dpo/lora.yaml", "lit_factory/assets/sparrow-tokenizer", "--trainer.max_epochs", "4",
               "--data.init_args.max_samples", "8", "--data.init_args.cutoff_len", "192",
               "--data.init_args.template", "chatml", "--data.init_args.batch_size", "2",
               "--model.init_args.optimizer.init_args.lr", "3e-3", "--model.init_args.warmup_steps", "0")
    assert code == 0
    margins = read_scalars(next(tmp_path.glob("*/version_0")), "train/rewards/margin")
    assert len(margins) == 16 and margins[0] == 0.0  # the first step: policy == reference
    assert min(margins[-4:]) > 0.05, margins


@pytest.mark.parametrize("recipe, dataset, expected", [
    ("recipes/dpo/lora.yaml", "alpaca_en_demo", "not a ranking dataset"),
    ("recipes/reward/lora.yaml", "identity", "not a ranking dataset"),
    ("recipes/kto/lora.yaml", "alpaca_en_demo", "no kto_tag column"),
    ("recipes/kto/lora.yaml", "dpo_en_demo", "preference (ranking) dataset"),
])
def test_preference_stages_on_the_wrong_data_exit_2_with_one_line(tmp_path, capsys, recipe, dataset, expected):
    code = fit(tmp_path, recipe, str(SHARED / "tokenizers" / "qwen2.5-instruct"), "--trainer.max_steps", "1",
               "--data.init_args.dataset", f"[{dataset}]", "--data.init_args.max_samples", "4")
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-factory: error:")]
    assert len(lines) == 1 and expected in lines[0] and dataset in lines[0]
