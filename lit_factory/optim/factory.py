"""The optimizer factory: how a stage turns its ``optimizer`` setting into a ``torch.optim.Optimizer``.

A recipe names either a plain optimizer class (``class_path: torch.optim.AdamW`` or
``bitsandbytes.optim.PagedAdamW8bit``), which receives the trainable parameters, or an ``OptimizerFactory``
(``lit_factory.optim.LoRAPlus``, ``GaLore``, ``BAdam``), which needs the model itself: parameter names for LoRA+,
module structure for GaLore's projected matrices and BAdam's blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Union

# Imported eagerly: jsonargparse needs the real classes to check a recipe's optimizer (only stages import this).
import torch
from torch import nn

#: A callable that makes an optimizer from parameters: an optimizer class, or its class path + init_args in YAML.
OptimizerCallable = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class OptimizerFactory(ABC):
    """An optimizer recipe that needs the model (names, modules), not just its trainable parameters."""

    @abstractmethod
    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer for ``model``'s trainable parameters."""


def build_optimizer(optimizer: Union[OptimizerFactory, OptimizerCallable], model: nn.Module) -> torch.optim.Optimizer:
    """Apply a stage's ``optimizer`` setting to ``model``."""
    if isinstance(optimizer, OptimizerFactory):
        return optimizer.build(model)
    return optimizer([p for p in model.parameters() if p.requires_grad])
