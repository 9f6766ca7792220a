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
    """

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
    ) -> None:
        if importlib.util.find_spec("galore_torch") is None:
            raise LitFactoryError("optimizer: GaLore needs the galore-torch package (pip install galore-torch)")
        if rank < 1 or update_interval < 1:
            raise LitFactoryError("optimizer.init_args: GaLore rank and update_interval must be at least 1")
        self.lr = lr
        self.weight_decay = weight_decay
        self.rank = rank
        self.update_interval = update_interval
        self.scale = scale
        self.projection = projection
        self.optimizer = optimizer
        self.target_modules = target_modules

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
            raise LitFactoryError(f"optimizer.init_args.target_modules: {self.target_modules!r} matches no trainable linear layer")
        return chosen

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        import galore_torch

        projected = self.projected_parameters(model)
        projected_ids = {id(p) for p in projected}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in projected_ids]
        groups = [{"params": rest}] if rest else []
        groups.append({"params": projected, "rank": self.rank, "update_proj_gap": self.update_interval,
                       "scale": self.scale, "proj_type": self.projection})
        if self.optimizer == "adafactor":
            return galore_torch.GaLoreAdafactor(
                groups, lr=self.lr, weight_decay=self.weight_decay, scale_parameter=False, relative_step=False
            )
        cls = galore_torch.GaLoreAdamW8bit if self.optimizer == "adamw8bit" else galore_torch.GaLoreAdamW
        return cls(groups, lr=self.lr, weight_decay=self.weight_decay)
