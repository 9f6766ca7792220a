"""Lightning callback for `startup.py`: prints the wall-clock time of the first optimizer step."""

import time

import lightning.pytorch as pl


class FirstStepClock(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            print(f"FIRST_STEP_AT {time.time()}", flush=True)
