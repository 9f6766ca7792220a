"""lit-factory's own Lightning callbacks: what the terminal shows while and after a run trains (``StepProgressBar``)
and LLaMA-Factory's ``plot_loss`` pictures (``LossPlot``)."""

from lit_factory.callbacks.loss_plot import LossPlot
from lit_factory.callbacks.progress import StepProgressBar

__all__ = ["LossPlot", "StepProgressBar"]
