"""Checkpoint files and run folders: a save killed mid-write never replaces the good file and its leftover is
cleaned by the next run; re-runs into a pinned folder neither copy (-v1) nor overwrite; `--ckpt_path last`
continues the newest run; the train loader resumes mid-epoch with exactly the batches an uninterrupted pass gives."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_factory.checkpointing import PeriodicCheckpoint, staging_path
from lit_factory.cli import main
from tiny_models import quiet_trainer

QUICKSTART = "recipes/quickstart.yaml"
TINY = ('{"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, '
        '"num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256}')

KILLED_SAVE = """
import os, signal, sys, torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lit_factory.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO(TorchCheckpointIO())
io.save_checkpoint({"step": torch.tensor(1)}, sys.argv[1])
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed once the new bytes are written
io.save_checkpoint({"step": torch.tensor(2), "big": torch.zeros(1 << 20)}, sys.argv[1])
"""


def test_a_save_killed_before_its_rename_leaves_the_previous_checkpoint_and_the_next_run_cleans_up(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    target = tmp_path / "checkpoints" / "last.ckpt"
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert torch.load(target, weights_only=True)["step"] == 1  # the complete older file, under its name
    assert staging_path(target).exists()  # the unfinished one is hidden beside it

    callback = PeriodicCheckpoint(every_n_steps=1, keep_last=2, dirpath=str(target.parent))
    quiet_trainer(tmp_path, 3, enable_checkpointing=True, callbacks=[callback]).fit(BoringModel())
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "step=2.ckpt", "step=3.ckpt"]
    assert torch.load(target, weights_only=True)["global_step"] == 3

    # A second run into the pinned folder reuses the names (no step=3-v1.ckpt, last-v1.ckpt).
    callback = PeriodicCheckpoint(every_n_steps=1, keep_last=2, dirpath=str(target.parent))
    quiet_trainer(tmp_path, 3, enable_checkpointing=True, callbacks=[callback]).fit(BoringModel())
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "step=2.ckpt", "step=3.ckpt"]


def quickstart(tmp_path: Path, *extra: str) -> int:
    return main(["fit", "--config", QUICKSTART, "--model.init_args.model.config", TINY, "--trainer.accelerator",
                 "cpu", "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "2",
                 "--trainer.callbacks.init_args.every_n_steps", "2", "--trainer.logger.init_args.save_dir",
                 str(tmp_path), "--data.init_args.max_samples", "8", *extra])


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("lit-factory: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_pinned_version_is_refused_unless_resumed_and_last_finds_the_newest_run(tmp_path, capsys):
    pinned = ("--trainer.logger.init_args.version", "mine")
    assert quickstart(tmp_path, "--trainer.max_steps", "2", *pinned) == 0
    run_dir = tmp_path / "quickstart" / "mine"
    model = (run_dir / "model.safetensors").read_bytes()
    capsys.readouterr()

    assert quickstart(tmp_path, "--trainer.max_steps", "2", *pinned) == 2
    error = one_line_error(capsys.readouterr().err)
    assert str(run_dir) in error and "--ckpt_path last" in error
    assert (run_dir / "model.safetensors").read_bytes() == model  # nothing overwritten

    (run_dir / ".saving").mkdir()  # a kill during the final save left its staging folder
    (run_dir / ".saving" / "model.safetensors").write_bytes(b"half")
    assert quickstart(tmp_path, "--trainer.max_steps", "4", *pinned, "--ckpt_path", "last") == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (run_dir / ".saving").exists()

    # Without a pinned version, `last` picks the newest run folder and the logger continues it.
    assert quickstart(tmp_path, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0
    assert sorted(p.name for p in (tmp_path / "quickstart").iterdir()) == ["mine"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_ckpt_path_last_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert quickstart(tmp_path, "--trainer.max_steps", "2", "--ckpt_path", "last") == 2
    error = one_line_error(capsys.readouterr().err)
    assert "--ckpt_path last" in error and str(tmp_path / "quickstart") in error
    assert not (tmp_path / "quickstart").exists()


@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("stopped_after", [1, 2, 4])  # batches of the epoch consumed (4: all of them)
def test_the_train_loader_resumes_with_the_batches_an_uninterrupted_pass_gives(stopped_after, distributed):
    from torch.utils.data.distributed import DistributedSampler

    from lit_factory.data.sampling import EpochShuffleSampler, ResumableDataLoader

    def loader():
        data = list(range(11))
        # DDP: Lightning swaps in a DistributedSampler (seeded by epoch too); the loader then drops batches.
        sampler = (DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3) if distributed
                   else EpochShuffleSampler(data, seed=3))
        return ResumableDataLoader(data, batch_size=3, sampler=sampler)

    # The reference: one loader run through epochs 0, 1 and 2 without stopping (as Lightning calls set_epoch).
    straight = loader()
    epochs = []
    for epoch in range(3):
        straight.sampler.set_epoch(epoch)
        epochs.append([batch.tolist() for batch in straight])
    assert epochs[0] != epochs[1]  # a new order every epoch

    first = loader()
    first.sampler.set_epoch(1)
    iterator = iter(first)
    for _ in range(stopped_after):
        next(iterator)
    state = first.state_dict()

    resumed = loader()
    resumed.load_state_dict(state)
    if stopped_after == 4:  # the epoch was over: the next pass is the next epoch, whole
        assert [batch.tolist() for batch in resumed] == epochs[2]
    else:
        assert [batch.tolist() for batch in resumed] == epochs[1][stopped_after:]
        resumed.sampler.set_epoch(2)
        assert [batch.tolist() for batch in resumed] == epochs[2]


def test_export_removes_the_staging_folder_a_killed_export_left(tmp_path):
    from lit_factory.model.export import write_atomically

    stale = tmp_path / ".out.k1ll3d_x"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    write_atomically(tmp_path / "out", lambda folder: (folder / "model.safetensors").write_bytes(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"whole"
