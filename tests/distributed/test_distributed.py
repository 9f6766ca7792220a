"""DDP on CPU (gloo) through Lightning's own launcher: 2 processes train exactly what 1 process trains on the same
global batch (per-step loss, validation loss, final weights), and rank 0 saves the model."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_models import DEMO, save_tiny_base

MICRO_BATCH, ACCUMULATE, STEPS = 4, 2, 3


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "peer-data" / "llamafactory"


def dpo_variant(config: dict) -> None:
    """Full-parameter DPO (a frozen reference copy) on LLaMA-Factory's dpo_en_demo pairs instead of SFT."""
    config["model"]["class_path"] = "lit_factory.stages.DPO"
    config["model"]["init_args"].update(beta=0.1, reference="copy")
    config["data"]["init_args"].update(dataset_dir=str(SHARED_DATA), dataset=["dpo_en_demo"], max_samples=32)


def recipe(directory: Path, batch_size: int, base: Path, variant=None) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "precision": "32-true", "max_steps": STEPS, "accumulate_grad_batches": ACCUMULATE,
            "log_every_n_steps": 1, "val_check_interval": STEPS * ACCUMULATE, "check_val_every_n_epoch": None,
            "enable_model_summary": False, "enable_progress_bar": False, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(directory), "name": "run", "version": 0}},
            "callbacks": [{"class_path": "lit_factory.board.progress.ProgressFile"}],
        },
        "model": {"class_path": "lit_factory.stages.SFT", "init_args": {
            "model": {"path": str(base)},  # a saved model: both runs start from the same weights
            "finetuning": {"class_path": "lit_factory.model.Full"},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
            "lr_schedule": "constant",
        }},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": {
            "dataset_dir": DEMO, "dataset": ["sparrow_sft"], "template": "chatml", "cutoff_len": 64,
            "batch_size": batch_size, "val_size": 4, "shuffle": False,
        }},
    }
    if variant is not None:
        variant(config)
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fit(directory: Path, batch_size: int, *overrides: str, env: dict | None = None, variant=None) -> subprocess.Popen:
    directory.mkdir(exist_ok=True)
    base = directory.parent / "base"
    if not base.exists():
        save_tiny_base(base)
    command = [sys.executable, "-m", "lit_factory", "fit", "--config",
               str(recipe(directory, batch_size, base, variant)), *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


def logged(directory: Path, name: str) -> list[float]:
    with open(directory / "run" / "version_0" / "metrics.csv") as file:
        return [float(row[name]) for row in csv.DictReader(file) if row.get(name)]


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "run" / "version_0" / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """One process with micro-batch 4: the run the distributed ones are compared with."""
    root = tmp_path_factory.mktemp("runs")
    finish(fit(root / "single", MICRO_BATCH, "--trainer.devices", "1"))
    return root / "single"


@pytest.fixture(scope="module")
def runs(single) -> tuple[Path, Path]:
    """The one-process run, and DDP over 2 gloo processes with micro-batch 2 (the same global batch)."""
    ddp = single.parent / "ddp"
    finish(fit(ddp, MICRO_BATCH // 2, "--trainer.devices", "2", "--trainer.strategy", "ddp",
               env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}))
    return single, ddp


@pytest.mark.slow
def test_ddp_run_finishes_and_rank_zero_saves_the_model(runs):
    single, ddp = runs
    run_dir = ddp / "run" / "version_0"
    assert {"model.safetensors", "config.json", "tokenizer.json", "progress.json"} <= {p.name for p in run_dir.iterdir()}
    assert len(logged(ddp, "train/loss")) == STEPS
    assert weights(ddp).keys() == weights(single).keys()


def assert_same_run(single: Path, distributed: Path, metrics: tuple[str, ...] = ()) -> None:
    """Same per-step train/loss, val/loss, ``metrics`` and final weights (fp32, 1e-5) as the one-process run."""
    import torch

    assert len(logged(single, "train/loss")) == STEPS
    for name in ("train/loss", "val/loss", *metrics):
        assert logged(single, name), name
        assert logged(distributed, name) == pytest.approx(logged(single, name), abs=1e-5), name
    ours, reference = weights(distributed), weights(single)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_ddp_two_processes_train_like_one_with_the_same_global_batch(runs):
    assert_same_run(*runs)


@pytest.mark.slow
def test_two_nodes_of_one_process_on_localhost_train_like_one_process(runs, tmp_path):
    """``num_nodes: 2`` with the usual environment (NODE_RANK, MASTER_ADDR, MASTER_PORT): one command per node."""
    single, _ = runs
    (tmp_path / "base").symlink_to(single.parent / "base")
    port = str(free_port())
    nodes = [fit(tmp_path / "nodes", MICRO_BATCH // 2, "--trainer.devices", "1", "--trainer.num_nodes", "2",
                 "--trainer.strategy", "ddp",
                 env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank), "LOCAL_RANK": "0"})
             for rank in (0, 1)]
    for node in nodes:
        finish(node)
    assert_same_run(single, tmp_path / "nodes")


def distributed_env() -> dict:
    tests = str(Path(__file__).resolve().parents[1])  # recording_head, imported by the `lit-factory fit` processes
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}


def recorded_projections(directory: Path) -> list[list[tuple[str, str]]]:
    """Each rank's chunked projections, as (weight type, weight shape), written by ``recording_head``."""
    records = directory / "projections"
    return [[tuple(line.split()[:2]) for line in (records / f"rank{rank}.txt").read_text().splitlines()]
            for rank in (0, 1)]


def recording_head(directory: Path) -> tuple[str, ...]:
    """Overrides that make the run's loss head ``ChunkedLogits`` recording its projections."""
    (directory / "projections").mkdir(parents=True, exist_ok=True)
    return ("--model.init_args.loss_head", "recording_head.RecordingChunkedLogits",
            "--model.init_args.loss_head.init_args.record_to", str(directory / "projections"))


def whole_head(base: Path) -> tuple[str, str]:
    """How ``recording_head`` writes the base model's whole lm_head weight: a parameter, vocabulary x hidden."""
    config = json.loads((base / "config.json").read_text())
    return "Parameter", f"{config['vocab_size']}x{config['hidden_size']}"


@pytest.mark.slow
def test_fsdp_two_processes_train_like_one_and_save_a_model_transformers_reloads(single, tmp_path):
    """FSDP2 over 2 gloo processes (rank 1 builds on the meta device and receives rank 0's weights), with the
    memory-lean loss head: the same losses and final weights as one process, every loss on both ranks projected in
    chunks through the whole (gathered) head weight, and the gathered model.safetensors reloads with plain
    transformers to the same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    (tmp_path / "base").symlink_to(single.parent / "base")
    run = tmp_path / "fsdp"
    finish(fit(run, MICRO_BATCH // 2, "--trainer.devices", "2", "--config", "recipes/distributed/fsdp.yaml",
               *recording_head(run), env=distributed_env()))
    assert_same_run(single, run)
    # One projection per micro-batch: STEPS x ACCUMULATE in training, one validation batch (4 rows, 2 per rank).
    assert recorded_projections(run) == [[whole_head(single.parent / "base")] * (STEPS * ACCUMULATE + 1)] * 2
    ids = torch.arange(3, 40).unsqueeze(0)
    logits = [AutoModelForCausalLM.from_pretrained(path / "run" / "version_0").eval()(ids).logits
              for path in (single, run)]
    # Weights agree to 1e-5 (assert_same_run: 2 ranks sum gradients in another order); the logits of 37 positions
    # through 2 layers amplify that float32 rounding to a few 1e-5.
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-4)


PREFERENCE_METRICS = tuple(f"{split}/rewards/{name}" for split in ("train", "val")
                           for name in ("chosen", "rejected", "accuracy", "margin"))


@pytest.fixture(scope="module")
def dpo_single(tmp_path_factory) -> Path:
    """The one-process DPO run both strategies are compared with."""
    root = tmp_path_factory.mktemp("dpo")
    finish(fit(root / "single", MICRO_BATCH, "--trainer.devices", "1", variant=dpo_variant))
    return root / "single"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"reference data not found: {SHARED_DATA}")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_dpo_on_two_processes_logs_and_trains_like_one(dpo_single, strategy):
    """DPO with a reference copy (sharded too under FSDP, its root resharded after each forward): 2 processes with
    half the micro-batch give one process's per-step loss, synced reward metrics (train and validation) and final
    weights, the policy's and the reference's log-probabilities projected in chunks through whole head weights."""
    run = dpo_single.parent / strategy
    finish(fit(run, MICRO_BATCH // 2, "--trainer.devices", "2", "--config", f"recipes/distributed/{strategy}.yaml",
               *recording_head(run), env=distributed_env(), variant=dpo_variant))
    assert_same_run(dpo_single, run, PREFERENCE_METRICS)
    # Each micro-batch (STEPS x ACCUMULATE in training, one in validation): the policy's and the reference's.
    assert recorded_projections(run) == [[whole_head(dpo_single.parent / "base")] * 2 * (STEPS * ACCUMULATE + 1)] * 2
