"""APOLLO (Zhu et al., 2025): AdamW's update of each big matrix, rescaled per channel by factors estimated in a
random low-rank projection of its gradient, so the optimizer states take SGD-like memory."""

from __future__ import annotations

from typing import Literal, Union

import torch

from lit_factory.optim.galore import GaLore


class APOLLO(GaLore):
    """APOLLO through the ``apollo-torch`` package (``APOLLOAdamW``): target matrices get the projected-scaling
    update, the rest plain AdamW. LLaMA-Factory's ``use_apollo``; its defaults.

    Args:
        lr: Learning rate.
        weight_decay: Decoupled weight decay.
        rank: Rank of the gradient projection (APOLLO-Mini: ``rank: 1`` with ``scale_type: tensor``).
        update_interval: Steps between redrawing (``random``) or recomputing (``svd``) the projection.
        scale: Scale of the update, applied as ``sqrt(scale)`` (LLaMA-Factory's default 32; APOLLO-Mini uses 128).
        projection: ``random`` (a seeded Gaussian projection, no SVD) or ``svd`` (GaLore's projector).
        projection_side: ``std`` (project the smaller side), ``left`` or ``right``.
        scale_type: ``channel`` (one scaling factor per row/column) or ``tensor`` (one per matrix).
        scale_front: Apply ``sqrt(scale)`` before the norm-growth limiter instead of after it.
        target_modules: ``all`` for every linear layer but the output head, or a list of module names.
        layerwise: As in ``GaLore``: one optimizer per parameter, stepped during backward (``apollo_layerwise``).
    """

    package = ("apollo_torch", "apollo-torch")

    def __init__(
        self,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        rank: int = 16,
        update_interval: int = 200,
        scale: float = 32.0,
        projection: Literal["random", "svd"] = "random",
        projection_side: Literal["std", "left", "right"] = "std",
        scale_type: Literal["channel", "tensor"] = "channel",
        scale_front: bool = False,
        target_modules: Union[str, list[str]] = "all",
        layerwise: bool = False,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, rank=rank, update_interval=update_interval, scale=scale,
                         projection="std", target_modules=target_modules, layerwise=layerwise)
        self.projection = projection
        self.projection_side = projection_side
        self.scale_type = scale_type
        self.scale_front = scale_front

    def projection_options(self) -> dict:
        return {"rank": self.rank, "proj": self.projection, "proj_type": self.projection_side,
                "update_proj_gap": self.update_interval, "scale": self.scale, "scale_type": self.scale_type}

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        from apollo_torch import APOLLOAdamW

        return APOLLOAdamW(groups, lr=self.lr, weight_decay=self.weight_decay, scale_front=self.scale_front)
