"""Checkpoints a killed run can resume from exactly: periodic, atomic, with the RNG states; and the run folder rules
of ``lit-factory fit`` (``--ckpt_path last``, no silent overwrite of a finished run, stale staging cleaned).

The rest of what an exact resume needs comes from Lightning (optimizer, LR scheduler, loop progress, logger step) and
from :class:`lit_factory.data.sampling.ResumableDataLoader` (shuffle order and position inside the epoch).
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO

from lit_factory.errors import LitFactoryError
from lit_factory.io import write_file_atomically

STAGING_SUFFIX = ".saving"


class AtomicCheckpointIO(CheckpointIO):
    """Writes each checkpoint to a hidden file beside its target, fsyncs it and renames it into place.

    Lightning's ``TorchCheckpointIO`` opens the final name and writes into it, so a kill mid-write leaves a truncated
    ``.ckpt`` under a name ``--ckpt_path last`` would pick. A rename within one folder is atomic on POSIX and Windows
    file systems, which a temporary file elsewhere (``TMPDIR`` on another file system) is not.

    Args:
        wrapped: the checkpoint IO that serialises (the strategy's own, normally ``TorchCheckpointIO``).
    """

    def __init__(self, wrapped: CheckpointIO) -> None:
        self.wrapped = wrapped

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if not _is_local_file_protocol(str(path)):  # object stores write whole objects already
            return self.wrapped.save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        write_file_atomically(target, lambda staging: self.wrapped.save_checkpoint(checkpoint, staging, storage_options),
                              staging=staging_path(target))

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None, **kwargs: Any) -> dict[str, Any]:
        return self.wrapped.load_checkpoint(path, map_location=map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.wrapped.remove_checkpoint(path)

    def teardown(self) -> None:
        self.wrapped.teardown()


def staging_path(target: Path) -> Path:
    """Where :class:`AtomicCheckpointIO` writes ``target`` before the rename (hidden, same folder)."""
    return target.with_name(f".{target.name}{STAGING_SUFFIX}")


def capture_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as plain values and tensors (``weights_only`` loadable)."""
    import numpy as np

    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_states`."""
    import numpy as np

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = states["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class PeriodicCheckpoint(ModelCheckpoint):
    """Checkpoints every ``every_n_steps`` optimizer steps and/or ``every_n_minutes``, keeping the newest
    ``keep_last`` plus ``last.ckpt``, and once more when training ends; ``--ckpt_path last`` resumes the newest.

    Saves happen only right after an optimizer step: gradients accumulated over part of a window are not in a
    checkpoint, so a save in the middle of one could not be resumed exactly. Each file is written atomically
    (:class:`AtomicCheckpointIO`), and the generator states travel in the checkpoint, so a resumed run draws the same
    dropout masks. Files keep their names across resumes (no ``-v1`` copies in a pinned ``dirpath``).

    Args:
        every_n_steps: save after every this many optimizer steps (0: not by steps).
        every_n_minutes: save when this many minutes of training passed since the last save (null: not by time).
        keep_last: how many step checkpoints (``step=N.ckpt``) to keep besides ``last.ckpt``; -1 keeps all.
        dirpath: the folder of the checkpoints (default: ``<run folder>/checkpoints``).
        filename: name of the step checkpoints, formatted with the step (Lightning's ``ModelCheckpoint`` syntax).
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        every_n_minutes: Optional[float] = None,
        keep_last: int = 3,
        dirpath: Optional[str] = None,
        filename: str = "step={step}",
    ) -> None:
        if every_n_steps < 0 or (every_n_minutes is not None and every_n_minutes <= 0):
            raise LitFactoryError(
                f"PeriodicCheckpoint: every_n_steps={every_n_steps}, every_n_minutes={every_n_minutes}. Fix: a "
                "positive step count (or 0) and a positive number of minutes (or null)."
            )
        if keep_last < -1:
            raise LitFactoryError(f"PeriodicCheckpoint: keep_last={keep_last}. Fix: a count, or -1 to keep all.")
        # Ranked by step, highest kept: Lightning's top-k machinery then keeps the newest `keep_last` (it only
        # keeps one, or all, without a monitored value). Epoch ends and validation trigger nothing: we decide.
        super().__init__(dirpath=dirpath, filename=filename, monitor="step", mode="max", save_top_k=keep_last,
                         save_last=True, every_n_epochs=0, auto_insert_metric_name=False,
                         enable_version_counter=False)
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self._step_at_batch_start: Optional[int] = None
        self._last_save_time = time.monotonic()
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self._state_before_setup: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        # Without the intervals (ModelCheckpoint's key has them): a resume that saves more or less often still gets
        # the RNG states and the kept files. Lightning refuses two callbacks of one key, so one per run.
        return type(self).__qualname__

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._state_before_setup is not None:  # now that dirpath is known, the kept files can be matched
            super().load_state_dict(self._state_before_setup)
            self._state_before_setup = None
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            trainer.strategy.checkpoint_io = AtomicCheckpointIO(trainer.strategy.checkpoint_io)
        if trainer.is_global_zero and self.dirpath is not None and _is_local_file_protocol(str(self.dirpath)):
            for stale in Path(self.dirpath).glob(f".*{STAGING_SUFFIX}"):  # left by a kill mid-save
                if stale.is_file():
                    stale.unlink(missing_ok=True)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Restored here rather than at load time: the resumed run re-creates its data iterators before this point,
        # which draws from the generators; the uninterrupted run was past that.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._last_save_time = time.monotonic()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_batch_start or self._should_skip_saving_checkpoint(trainer):
            return  # no optimizer step in this batch (accumulating), or this step is saved already
        by_steps = self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0
        by_time = self.every_n_minutes is not None and time.monotonic() - self._last_save_time >= 60 * self.every_n_minutes
        by_time = trainer.strategy.broadcast(by_time)  # every rank must join the save
        if by_steps or by_time:
            self._save_now(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_now(trainer)  # the final state, so a longer run can continue from it

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        return None  # saves follow optimizer steps only (see on_train_batch_end)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        return None

    def _save_now(self, trainer: Any) -> None:
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_save_time = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        # Every rank's generators (rank 0 alone writes the file, and ranks draw differently: dropout masks follow
        # each rank's batch shapes); every rank calls this while saving, so the gather is joined by all.
        states = capture_rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every_rank, states)
            return {**super().state_dict(), "rng_states": states, "rng_states_of_ranks": every_rank}
        return {**super().state_dict(), "rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._rng_to_restore = state_dict.pop("rng_states", None)
        of_ranks = state_dict.pop("rng_states_of_ranks", None)
        if of_ranks is not None and torch.distributed.is_initialized() \
                and len(of_ranks) == torch.distributed.get_world_size():
            self._rng_to_restore = of_ranks[torch.distributed.get_rank()]  # else (another world size): rank 0's
        if self.dirpath is None:  # Lightning restores callbacks before `setup` resolves the default folder
            self._state_before_setup = state_dict
        else:
            super().load_state_dict(state_dict)


# ---- the run folder of `lit-factory fit` ----------------------------------------------------------------------------
#: What a run leaves in its folder; finding one of them means the folder holds a run already.
RUN_OUTPUTS = ("config.yaml", "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
               "checkpoints")
_FOLDER_LOGGERS = ("TensorBoardLogger", "CSVLogger")


def _logger_args(trainer_config: Any) -> Optional[Any]:
    """The ``init_args`` of a single TensorBoard/CSV logger in the parsed config (None for other loggers)."""
    logger = trainer_config.get("logger")
    class_path = str(logger.get("class_path", "")) if hasattr(logger, "get") else ""
    if class_path.rsplit(".", 1)[-1] not in _FOLDER_LOGGERS:
        return None
    return logger.get("init_args")


def _version_folder(version: Any) -> str:
    return version if isinstance(version, str) else f"version_{version}"


def _pinned_checkpoint_dir(trainer_config: Any) -> Optional[Path]:
    for callback in trainer_config.get("callbacks") or []:
        init_args = callback.get("init_args") if hasattr(callback, "get") else None
        if init_args is not None and init_args.get("dirpath") and "Checkpoint" in str(callback.get("class_path")):
            return Path(init_args.get("dirpath"))
    return None


def newest_checkpoint(folders: list[Path]) -> Optional[Path]:
    """The most recently written ``*.ckpt`` in ``folders`` (staging files are hidden and skipped)."""
    found = [path for folder in folders if folder.is_dir() for path in folder.glob("*.ckpt") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime_ns) if found else None


def prepare_fit_run(config: Any) -> None:
    """Apply the run-folder rules to the parsed ``fit`` config, before anything is built.

    ``ckpt_path: last`` becomes the newest checkpoint of the run (``<save_dir>/<name>/<version>/checkpoints``, the
    newest version when none is pinned, or a pinned ``dirpath``), and the logger continues that version's folder,
    so the TensorBoard curves go on where they stopped. A pinned version that holds a run already is refused
    unless it is being resumed. Staging folders a killed save left there are removed.
    """
    trainer_config = config.get("trainer")
    logger_args = _logger_args(trainer_config)
    root = None
    if logger_args is not None:
        root = Path(logger_args.get("save_dir") or ".") / (logger_args.get("name") or "")
    version = None if logger_args is None else logger_args.get("version")
    if config.get("ckpt_path") == "last":
        pinned = _pinned_checkpoint_dir(trainer_config)
        if pinned is not None:
            folders = [pinned]
        elif root is not None and version is not None:
            folders = [root / _version_folder(version) / "checkpoints"]
        elif root is not None:
            folders = sorted(root.glob("*/checkpoints"))
        else:
            return  # another logger: Lightning's own `last` lookup beside the ModelCheckpoint
        checkpoint = newest_checkpoint(folders)
        if checkpoint is None:
            where = ", ".join(str(folder) for folder in folders) or f"{root}/*/checkpoints"
            raise LitFactoryError(f"--ckpt_path last: no checkpoint in {where}. Fix: drop --ckpt_path to start a "
                                  "new run, or give the checkpoint file.")
        config["ckpt_path"] = str(checkpoint)
        if logger_args is not None and version is None and pinned is None:
            version = checkpoint.parent.parent.name
            logger_args["version"] = version
    if root is None or version is None:
        return  # a new version folder each run: nothing to collide with
    run_dir = root / _version_folder(version)
    held = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if held and config.get("ckpt_path") is None:
        raise LitFactoryError(
            f"trainer.logger.init_args.version={version!r}: {run_dir} already holds a run ({', '.join(held)}). "
            "Fix: choose another version (or none for a new one), or resume it with --ckpt_path last."
        )
    shutil.rmtree(run_dir / ".saving", ignore_errors=True)  # Stage.save_pretrained's, left by a kill
