"""Train/eval mode of a model around one computation."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from torch import nn


@contextmanager
def evaluating(module: "nn.Module") -> Iterator["nn.Module"]:
    """Run the block with ``module`` in eval mode (dropout off), then put every submodule back in its own mode.

    For reference and reward passes that share the trained model (a disabled or swapped adapter): they must score
    the frozen policy deterministically, while the training forwards around them keep dropout on.
    """
    modes = {submodule: submodule.training for submodule in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes.items():
            submodule.training = training
