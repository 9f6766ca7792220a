"""GaLore (Zhao et al., 2024): Adam states of the big weight matrices kept in a low-rank gradient projection."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal, Union

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.optim.factory import OptimizerFactory


class GaLore(OptimizerFactory):
    """GaLore through the ``galore-torch`` package: target matrices get projected updates, the rest plain AdamW.

    Args:
        lr: Learning rate.
        weight_decay: Decoupled weight decay.
        rank: Rank of the gradient projection.
        update_interval: Steps between recomputing the projection (an SVD of the gradient).
        scale: Scale of the projected update (LLaMA-Factory's fine-tuning default 2.0; the GaLore paper's
            pre-training used 0.25).
        projection: ``std`` (project the smaller side), ``reverse_std``, ``left``, ``right`` or ``full``.
        optimizer: ``adamw``, ``adamw8bit`` (bitsandbytes states) or ``adafactor``.
        target_modules: ``all`` for every linear layer but the output head, or a list of module names
            (``[q_proj, v_proj, mlp]`` matches names containing them).
        layerwise: One optimizer per parameter, stepped as soon as its gradient is ready during backward (GaLore's
            per-layer updates, LLaMA-Factory's ``galore_layerwise``): no two layers' gradients exist at once. Needs
            ``trainer.accumulate_grad_batches: 1``; gradient clipping has nothing left to clip.
    """

    #: The package that owns the optimizer (named in the error when it is missing).
    package = ("galore_torch", "galore-torch")

    def __init__(
        self,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        rank: int = 16,
        update_interval: int = 200,
        scale: float = 2.0,
        projection: Literal["std", "reverse_std", "left", "right", "full"] = "std",
        optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw",
        target_modules: Union[str, list[str]] = "all",
        layerwise: bool = False,
    ) -> None:
        self._check_package()
        if rank < 1 or update_interval < 1:
            raise LitFactoryError(f"model.init_args.optimizer.init_args: {type(self).__name__} rank={rank}, "
                                  f"update_interval={update_interval}. Fix: both at least 1.")
        self.lr = lr
        self.weight_decay = weight_decay
        self.rank = rank
        self.update_interval = update_interval
        self.scale = scale
        self.projection = projection
        self.optimizer = optimizer
        self.target_modules = target_modules
        self.layerwise = layerwise

    def _check_package(self) -> None:
        module, distribution = self.package
        if importlib.util.find_spec(module) is None:
            raise LitFactoryError(f"model.init_args.optimizer: {type(self).__name__} needs the {distribution} package "
                                  f"(pip install {distribution}). Fix: install it.")

    def projected_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The trainable 2-D weights GaLore projects: those of the target linear layers."""
        head = model.get_output_embeddings()
        chosen = []
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear) or module is head or not module.weight.requires_grad:
                continue
            if self.target_modules == "all" or any(re.search(rf"\b{t}\b", name) for t in self.target_modules):
                chosen.append(module.weight)
        if not chosen:
            raise LitFactoryError(
                f"model.init_args.optimizer.init_args.target_modules: {self.target_modules!r} matches no trainable "
                "linear layer. Fix: name the model's linear layers, e.g. [q_proj, v_proj]."
            )
        return chosen

    def projection_options(self) -> dict:
        """The options of the projected parameter group (the optimizer reads them per group)."""
        return {"rank": self.rank, "update_proj_gap": self.update_interval, "scale": self.scale,
                "proj_type": self.projection}

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The package's optimizer over ``groups``."""
        import galore_torch

        if self.optimizer == "adafactor":
            return galore_torch.GaLoreAdafactor(
                groups, lr=self.lr, weight_decay=self.weight_decay, scale_parameter=False, relative_step=False
            )
        cls = galore_torch.GaLoreAdamW8bit if self.optimizer == "adamw8bit" else galore_torch.GaLoreAdamW
        return cls(groups, lr=self.lr, weight_decay=self.weight_decay)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        projected = self.projected_parameters(model)
        projected_ids = {id(p) for p in projected}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in projected_ids]
        if self.layerwise:
            from lit_factory.optim.combined import LayerwiseOptimizer

            options = self.projection_options()
            return LayerwiseOptimizer({
                **{p: self.make_optimizer([{"params": [p]}]) for p in rest},
                **{p: self.make_optimizer([{"params": [p], **options}]) for p in projected},
            })
        groups = [{"params": rest}] if rest else []
        groups.append({"params": projected, **self.projection_options()})
        return self.make_optimizer(groups)
