"""A callback for the resume tests (imported by `lit-factory fit` subprocesses): SIGKILL its own process when
training reaches a given batch, so nothing is saved or flushed, as when a job is killed."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class SigkillAtBatch(Callback):
    """Kill the process at the start of training batch ``batch`` (counted over all epochs from 0)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.fit_loop.total_batch_idx >= self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
