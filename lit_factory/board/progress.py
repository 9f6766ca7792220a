"""A Lightning callback that writes the run's progress to ``<log_dir>/progress.json`` for the board to read.

TensorBoard events hold the logged metrics but not the total step count, and the console progress bar counts
batches per epoch; the board needs global step / total steps and timing, which only the trainer knows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from lit_factory.io import write_text_atomically

PROGRESS_FILE = "progress.json"


class ProgressFile(Callback):
    """Write ``{"step", "total", "elapsed", "status"}`` to ``progress.json`` in the trainer's log folder.

    Args:
        every_seconds: Least time between two writes while training (each write is one small file).
    """

    def __init__(self, every_seconds: float = 1.0) -> None:
        self.every_seconds = every_seconds
        self._started = 0.0
        self._start_step: Optional[int] = None
        self._last_write = 0.0
        self._total = 0
        self._directory: Optional[str] = None

    def _write(self, trainer: Trainer, status: str) -> None:
        # Only rank 0 writes, at times of its own clock: no collective may happen here (see on_train_start).
        if not trainer.is_global_zero or self._directory is None:
            return
        path = Path(self._directory) / PROGRESS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "step": int(trainer.global_step),
            "total": int(self._total),
            # A resumed run starts here; the ETA counts only the steps of this process.
            "start_step": int(trainer.global_step) if self._start_step is None else self._start_step,
            "elapsed": time.time() - self._started,
            "status": status,
            "updated": time.time(),
        }
        write_text_atomically(path, json.dumps(record))  # atomic: the board never reads half a file
        self._last_write = time.time()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir is a collective (rank 0's folder, broadcast): asked once here, where every rank comes.
        self._directory = trainer.log_dir
        self._started = time.time()
        estimated = trainer.estimated_stepping_batches
        self._total = int(estimated) if estimated != float("inf") else int(trainer.max_steps)
        self._write(trainer, "running")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._start_step is None:  # a resumed run's step is restored only after on_train_start
            self._start_step = int(trainer.global_step)
            self._started = time.time()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if time.time() - self._last_write >= self.every_seconds:
            self._write(trainer, "running")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._write(trainer, "stopped" if isinstance(exception, KeyboardInterrupt) else "failed")


class StopCheckpoint(Callback):
    """Save ``<dirpath>/last.ckpt`` when training ends by an exception: Stop's SIGINT (a ``KeyboardInterrupt``).

    Lightning's ``OnExceptionCheckpoint`` does the same, but its presence makes every ``fit`` without a
    ``ckpt_path`` resume from ``last`` (with a misleading ``.fit(ckpt_path=None)`` warning), so a new run in a folder
    with an old checkpoint would continue it. The board asks for a resume explicitly (``--ckpt_path last``).

    Args:
        dirpath: The run's checkpoint folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        trainer.save_checkpoint(os.path.join(self.dirpath, "last.ckpt"))
