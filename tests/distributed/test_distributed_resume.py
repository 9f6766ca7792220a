"""FSDP2 resume: a 2-process (gloo) LoRA run killed with SIGKILL on both ranks after a checkpoint and resumed with
`--ckpt_path last` trains what the uninterrupted FSDP run trains: the same per-step losses from the checkpoint on,
the same validation loss and the same saved adapter weights (CPU float32).

Shuffled data over several epochs, accumulation over 2 batches, AdamW and LoRA dropout: the sampler position of each
rank, the accumulation phase, the optimizer state gathered from the shards and every rank's generator state must all
come back for the numbers to match.
"""

import time
from pathlib import Path

import pytest

from test_distributed import distributed_env, fit, logged

STEPS, ACCUMULATE, EVERY = 6, 2, 3
# 14 training rows over 2 ranks, 2 per batch: 4 batches (2 steps) an epoch. Batches count from 0 over all epochs:
# step 3's checkpoint follows batch 5, in the middle of epoch 1; the kill at the start of batch 7 is inside step 4's
# accumulation window, so the resumed run restarts mid-epoch and replays batch 6.
KILL_AT = 7


def resumable(killed: bool):
    """The test recipe as a LoRA run with dropout, AdamW, shuffling and checkpoints every EVERY steps."""

    def variant(config: dict) -> None:
        trainer = config["trainer"]
        trainer.update(max_steps=STEPS, val_check_interval=STEPS * ACCUMULATE, max_epochs=-1)
        trainer["callbacks"].append({"class_path": "lit_factory.checkpointing.PeriodicCheckpoint",
                                     "init_args": {"every_n_steps": EVERY, "every_n_minutes": None, "keep_last": 2}})
        if killed:
            trainer["callbacks"].append({"class_path": "sigkill_at_batch.SigkillAtBatch",
                                         "init_args": {"batch": KILL_AT}})
        model = config["model"]["init_args"]
        model["finetuning"] = {"class_path": "lit_factory.model.LoRA",
                               "init_args": {"r": 4, "alpha": 8, "dropout": 0.1}}
        model["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}
        config["data"]["init_args"].update(shuffle=True, max_samples=18)

    return variant


def processes_with(marker: str) -> list[int]:
    """Process ids whose command line mentions ``marker`` (the ranks of one run: its recipe path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def run_to_end(directory: Path, *overrides: str, killed: bool = False) -> int:
    process = fit(directory, 2, "--trainer.devices", "2", "--config", "recipes/distributed/fsdp.yaml", *overrides,
                  env=distributed_env(), variant=resumable(killed))
    output, _ = process.communicate(timeout=600)
    if killed:  # rank 1 kills itself at the same batch; give it a moment to be gone
        deadline = time.monotonic() + 60
        while processes_with(str(directory / "recipe.yaml")) and time.monotonic() < deadline:
            time.sleep(1)
        assert not processes_with(str(directory / "recipe.yaml")), "a rank outlived the kill"
    else:
        assert process.returncode == 0, output[-3000:]
    return process.returncode


def losses_by_step(directory: Path, name: str) -> dict[int, float]:
    """``name`` at each logged step (the last value where a step was logged twice)."""
    import csv

    with open(directory / "run" / "version_0" / "metrics.csv") as file:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(file) if row.get(name)}


def adapter(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "run" / "version_0" / "adapter_model.safetensors")


@pytest.mark.slow  # three 2-process runs, about 1.5 min on 2 cores
def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_to_end(straight)
    assert run_to_end(resumed, killed=True) == -9
    assert sorted(p.name for p in (resumed / "run" / "version_0" / "checkpoints").iterdir()) == \
        ["last.ckpt", "step=3.ckpt"]
    run_to_end(resumed, "--ckpt_path", "last")

    expected, got = losses_by_step(straight, "train/loss"), losses_by_step(resumed, "train/loss")
    assert len(expected) == STEPS
    resumed_steps = [step for step in expected if step >= min(got)]
    assert len(resumed_steps) == STEPS - 3 and set(got) == set(resumed_steps)  # steps 4 to 6, logged once more
    assert got == pytest.approx({step: expected[step] for step in resumed_steps}, abs=1e-6)
    assert len(logged(straight, "val/loss")) == 1  # at the end
    assert logged(resumed, "val/loss") == pytest.approx(logged(straight, "val/loss"), abs=1e-6)
    expected_weights, got_weights = adapter(straight), adapter(resumed)
    assert expected_weights and got_weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert (got_weights[name] - tensor).abs().max() <= 1e-6, name
