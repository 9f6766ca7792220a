"""Kill -9 a `lit-factory fit` at a random batch after its first checkpoint, resume it with `--ckpt_path last`, and
get the uninterrupted run: the same TensorBoard scalars at every step and the same saved weights (CPU float32).

The runs shuffle, accumulate gradients over 2 batches, span several epochs with validation at each epoch end and
use LoRA dropout, so the shuffle order, position in the epoch, accumulation phase, LR schedule, logger step and RNG
states must all come back for the curves to match.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_models import DEMO, SPARROW, save_tiny_base

REPO = Path(__file__).resolve().parents[2]
PEER_DATA = REPO.parent / "shared" / "peer-data" / "llamafactory"
STEPS, EVERY = 8, 2  # optimizer steps; checkpoint interval
# 10 training rows, 2 per batch, 2 batches per step: 3 steps per epoch, 14 batches for 8 steps.
BATCHES = 14
FIRST_CHECKPOINT_BATCH = 2 * EVERY - 1  # the batch whose optimizer step is step EVERY (batches count from 0)

DATA = {
    "sft": {"dataset_dir": DEMO, "dataset": ["sparrow_sft"], "cutoff_len": 64},
    "dpo": {"dataset_dir": str(PEER_DATA), "dataset": ["dpo_en_demo"], "cutoff_len": 96},
}


def overlay(tmp_path: Path, base: Path, kind: str, *extra_callbacks: dict) -> str:
    """A second --config: tiny base model, CPU float32, small data, frequent checkpoints."""
    checkpoint = {"class_path": "lit_factory.checkpointing.PeriodicCheckpoint",
                  "init_args": {"every_n_steps": EVERY, "every_n_minutes": None, "keep_last": 2}}
    recipe = {
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": STEPS, "max_epochs": -1,
                    "accumulate_grad_batches": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "callbacks": [checkpoint, *extra_callbacks]},
        "model": {"init_args": {"model": {"path": str(base), "gradient_checkpointing": False, "dtype": "float32"},
                                "finetuning": {"init_args": {"dropout": 0.1}},
                                "optimizer": {"init_args": {"lr": 3e-3}}, "warmup_steps": 2}},
        "data": {"init_args": {**DATA[kind], "template": "chatml", "batch_size": 2, "max_samples": 14,
                               "val_size": 4}},
    }
    path = tmp_path / f"{kind}-{len(extra_callbacks)}.yaml"
    path.write_text(json.dumps(recipe))
    return str(path)


def fit(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-m", "lit_factory", "fit", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def scalars(run_dir: Path) -> dict[tuple[str, int], list[float]]:
    """(tag, step) -> the values written at that step (the logger step counts optimizer steps);
    a step written again after a resume keeps the newest events file's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[tuple[str, int], list[float]] = {}
    for events_file in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime_ns):
        events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        events.Reload()
        in_file: dict[tuple[str, int], list[float]] = {}
        for tag in events.Tags()["scalars"]:
            if tag != "train/tokens_per_sec":  # wall-clock timing
                for event in events.Scalars(tag):
                    in_file.setdefault((tag, event.step), []).append(event.value)
        values.update(in_file)
    return values


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter_model.safetensors")


@pytest.mark.slow  # six short `lit-factory fit` processes, about 1.5 min on 2 cores
@pytest.mark.parametrize("kind, recipe", [("sft", "recipes/sft/lora.yaml"), ("dpo", "recipes/dpo/lora.yaml")])
def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path, kind, recipe):
    if kind == "dpo" and not PEER_DATA.exists():
        pytest.skip(f"reference data not found: {PEER_DATA}")
    base = save_tiny_base(tmp_path / "base")
    config = ["--config", recipe, "--config", overlay(tmp_path, base, kind)]
    straight = fit(*config, "--trainer.logger.init_args.save_dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    kill_at = random.SystemRandom().randint(FIRST_CHECKPOINT_BATCH + 1, BATCHES - 1)
    killer = {"class_path": "sigkill_at_batch.SigkillAtBatch", "init_args": {"batch": kill_at}}
    resumed_dir = tmp_path / "resumed"
    killed = fit("--config", recipe, "--config", overlay(tmp_path, base, kind, killer),
                 "--trainer.logger.init_args.save_dir", str(resumed_dir))
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = fit(*config, "--trainer.logger.init_args.save_dir", str(resumed_dir), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    straight_run = tmp_path / "straight" / f"{kind}-lora" / "version_0"
    resumed_run = resumed_dir / f"{kind}-lora" / "version_0"
    assert sorted(p.name for p in (resumed_dir / f"{kind}-lora").iterdir()) == ["version_0"]  # one run, continued
    expected, got = scalars(straight_run), scalars(resumed_run)
    assert sum(len(expected[key]) for key in expected if key[0] == "train/loss") == STEPS  # one per step
    assert {key: len(got[key]) for key in got} == {key: len(expected[key]) for key in expected}, f"killed at {kill_at}"
    worst = max(abs(a - b) for key in expected for a, b in zip(got[key], expected[key]))
    assert worst <= 1e-6, f"killed at batch {kill_at}: scalars differ by up to {worst}"
    expected_weights, got_weights = weights(straight_run), weights(resumed_run)
    assert got_weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert (got_weights[name] - tensor).abs().max() <= 1e-6, f"killed at batch {kill_at}: {name}"
