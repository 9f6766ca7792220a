"""The terminal while ``fit`` runs and after: a progress bar over the run's optimizer steps, and a summary printed
once the bar is closed, so that where the model went reaches the scrollback.

Lightning's ``RichProgressBar`` counts the batches of one epoch (``Epoch 8/-2 ... 5/5`` for a ``max_steps`` run)
and shows the logger's ``v_num``; this subclass changes only that, and its per-batch work: nothing happens between
two optimizer steps, and the metrics text (which reads the logged tensors, a device sync) is refreshed at most
every ``metrics_every_s``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """A Rich progress bar over the run's optimizer steps (global step / total, elapsed • ETA, steps/s), then a
    summary of the run: folder, saved model or adapter, checkpoints, plots, final metrics, tokens/s, wall time.

    ``lit-factory fit`` adds it when the recipe names no progress bar and ``trainer.enable_progress_bar`` is not off.

    Args:
        refresh_rate: Redraws per second (0 hides the bar; the summary is still printed).
        metrics_every_s: Least seconds between two updates of the metrics shown beside the bar.
        summary: Print the summary at the end of ``fit`` (rank 0 only).
        console_kwargs: Arguments of the ``rich.console.Console`` the bar draws on (e.g. ``file``, ``width``).
    """

    def __init__(self, refresh_rate: int = 10, metrics_every_s: float = 0.5, summary: bool = True,
                 console_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__(refresh_rate=refresh_rate, console_kwargs=console_kwargs)
        self.metrics_every_s = metrics_every_s
        self.summary = summary
        self._total_steps: Optional[int] = None
        self._shown_step = -1
        self._metrics_shown_at = 0.0
        self._fit_started = self._train_started = self._train_ended = 0.0
        self._first_step = 0
        self._tokens: Any = 0  # loss-side tokens seen by this rank, a device tensor once counting starts

    # ---- the bar -----------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        estimated = trainer.estimated_stepping_batches  # optimizer steps of the whole run (accumulation counted)
        self._total_steps = None if math.isinf(estimated) else int(estimated)
        self._first_step = self._shown_step = trainer.global_step
        self._tokens = 0
        self._train_started = time.perf_counter()
        super().on_train_start(trainer, pl_module)

    def _initialize_train_progress_bar_id(self) -> None:
        # One task for the whole run (Lightning resets it every epoch), starting where a resumed run stands so the
        # ETA counts only this process's steps.
        trainer = self.trainer
        description = self._get_train_description(trainer.current_epoch)
        self.train_progress_bar_id = self.progress.add_task(
            f"[{self.theme.description}]{description}" if self.theme.description else description,
            total=self._total_steps, completed=trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        else:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))
        self.refresh()

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = self.trainer.max_epochs
        # max_epochs is -1 when max_steps alone bounds the run: no epoch count to show.
        return f"Epoch {current_epoch + 1}/{epochs}" if epochs is not None and epochs > 0 else "Training"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None:  # summed on the device, read once at the end: no sync per step
            self._tokens = self._tokens + mask.sum()
        step = trainer.global_step
        if self.is_disabled or step == self._shown_step:  # within an accumulation window nothing changes
            return
        self._shown_step = step
        if self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        now = time.perf_counter()
        if now - self._metrics_shown_at >= self.metrics_every_s:
            self._metrics_shown_at = now
            self._update_metrics(trainer, pl_module)
        self._update(self.train_progress_bar_id, step)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number; the summary names the run folder instead
        return metrics

    # ---- the summary -------------------------------------------------------------------------------------------
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_ended = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_folder = _run_folder(trainer)  # a collective (broadcast): every rank asks
        tokens = trainer.strategy.reduce(self._tokens, reduce_op="sum") if hasattr(self._tokens, "device") else 0
        self._update_metrics(trainer, pl_module)
        self._stop_progress()  # the bar is drawn for the last time; what follows stays in the scrollback
        if not (self.summary and trainer.is_global_zero):
            return
        lines = fit_summary(trainer, pl_module, run_folder, wall_seconds=time.perf_counter() - self._fit_started,
                            train_seconds=self._train_ended - self._train_started, tokens=int(tokens),
                            total_steps=self._total_steps, first_step=self._first_step)
        print("\n".join(lines), file=sys.stdout, flush=True)


def _run_folder(trainer: pl.Trainer) -> Optional[Path]:
    try:
        return Path(trainer.log_dir) if trainer.log_dir else None
    except Exception:  # a logger without a folder (e.g. a remote tracker)
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or (hasattr(value, "numel") and value.numel() == 1)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def fit_summary(trainer: pl.Trainer, pl_module: pl.LightningModule, run_folder: Optional[Path], wall_seconds: float,
                train_seconds: float, tokens: int, total_steps: Optional[int] = None, first_step: int = 0) -> list[str]:
    """The lines printed when ``fit`` ends: what ran, how fast, its final metrics and every output's path."""
    from lit_factory.callbacks.loss_plot import LossPlot

    steps = trainer.global_step
    total = f"/{total_steps}" if total_steps else ""
    speed = f", {tokens / train_seconds:,.0f} tokens/s" if tokens and train_seconds > 0 else ""
    resumed = f" (resumed at step {first_step})" if first_step else ""
    lines = [f"lit-factory fit finished: {steps}{total} steps{resumed} in {_duration(wall_seconds)}{speed}"]
    metrics = {name: float(value) for name, value in trainer.progress_bar_metrics.items()
               if name != "v_num" and _is_number(value)}
    if metrics:
        lines.append("  final " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if run_folder is not None:
        lines.append(f"  run folder:  {run_folder}")
    saved = getattr(pl_module, "saved_output", None)
    if saved is not None:
        kind, folder = saved
        lines.append(f"  {kind + ':':<12} {folder} (Hugging Face format, with the tokenizer)")
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder and Path(folder).is_dir() and any(Path(folder).iterdir()):
            resume = " (resume: --ckpt_path last)" if (Path(folder) / "last.ckpt").is_file() else ""
            lines.append(f"  checkpoints: {folder}{resume}")
    for callback in trainer.callbacks:
        if isinstance(callback, LossPlot):
            lines += [f"  loss plot:   {path}" for path in callback.written]
    return lines
