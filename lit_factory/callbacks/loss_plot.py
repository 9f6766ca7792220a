"""LLaMA-Factory's ``plot_loss``: PNG pictures of the loss curves in the run folder at the end of ``fit``, readable
without TensorBoard (``training_loss.png``, and ``training_eval_loss.png`` when validation ran)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from lit_factory.io import write_file_atomically

#: LLaMA-Factory's file names for our metric names (``training_<its key>.png``); others: ``training_<name>.png``.
LLAMAFACTORY_NAMES = {"train/loss": "loss", "val/loss": "eval_loss"}
LINE_COLOUR = "#1f77b4"  # LLaMA-Factory's (matplotlib's first colour): the raw curve faint, the smoothed one solid


def smooth(values: list[float]) -> list[float]:
    """TensorBoard's exponential moving average with LLaMA-Factory's weight, which grows with the number of points
    (``1.8 * (sigmoid(0.05 n) - 0.5)``: about 0 for a few points, 0.9 for hundreds), so short curves stay raw."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def plot_curve(steps: list[int], values: list[float], metric: str, title: str) -> Any:
    """A matplotlib figure of one metric over steps: the logged values and their ``smooth`` curve."""
    from matplotlib.figure import Figure  # a Figure without pyplot: no GUI backend, no global state

    figure = Figure()
    axes = figure.add_subplot(111)
    axes.plot(steps, values, color=LINE_COLOUR, alpha=0.4, label="original")
    axes.plot(steps, smooth(values), color=LINE_COLOUR, label="smoothed")
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.legend()
    return figure


def plot_file_name(metric: str) -> str:
    return f"training_{LLAMAFACTORY_NAMES.get(metric, metric).replace('/', '_')}.png"


class LossPlot(pl.Callback):
    """Draw each metric's curve into ``<run folder>/training_<name>.png`` when training ends (rank 0, written
    atomically); a metric never logged is skipped with a note.

    Training metrics are read at logging steps (every ``trainer.log_every_n_steps`` optimizer steps, when Lightning
    reads them for the loggers anyway), validation metrics after each validation run.

    Args:
        metrics: Logged names to plot: ``train/...`` over training steps, ``val/...`` over validations.
        folder: Where the pictures go (default: the run folder, ``Trainer.log_dir``).
    """

    def __init__(self, metrics: list[str] = ["train/loss", "val/loss"], folder: Optional[str] = None) -> None:  # noqa: B006 - copied below
        self.metrics = list(metrics)
        self.folder = folder
        self.points: dict[str, list[tuple[int, float]]] = {name: [] for name in self.metrics}
        self.written: list[Path] = []
        self._recorded_step = -1

    def _record(self, trainer: pl.Trainer, names: list[str]) -> None:
        values = trainer.callback_metrics
        for name in names:
            if name in values:
                self.points[name].append((trainer.global_step, float(values[name])))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % max(trainer.log_every_n_steps, 1) == 0 and step != self._recorded_step:  # a step the loggers record
            self._recorded_step = step
            self._record(trainer, [name for name in self.metrics if not name.startswith("val/")])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, [name for name in self.metrics if name.startswith("val/")])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._recorded_step:  # the last step, when it was not a logging step
            self._recorded_step = trainer.global_step
            self._record(trainer, [name for name in self.metrics if not name.startswith("val/")])
        folder = self.folder or trainer.log_dir  # a collective: asked on every rank
        if not trainer.is_global_zero or folder is None:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.metrics:
            if not self.points[name]:
                if not name.startswith("val/"):  # no validation ran: nothing to say
                    rank_zero_info(f"LossPlot: no {name} was logged; no plot of it")
                continue
            steps, values = zip(*self.points[name])
            figure = plot_curve(list(steps), list(values), name, f"{name} of {folder}")
            path = folder / plot_file_name(name)
            # atomic: never half a picture where a good one was
            write_file_atomically(path, lambda staging: figure.savefig(staging, format="png", dpi=100))
            self.written.append(path)
