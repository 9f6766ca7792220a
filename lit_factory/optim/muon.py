"""Muon (Jordan et al., 2024; Liu et al., 2025 for LLMs): momentum updates orthogonalised by Newton-Schulz
iterations, for the 2-D hidden weights; everything else (embeddings, output head, norms, biases) takes AdamW."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.optim.factory import OptimizerFactory


class Muon(OptimizerFactory):
    """``torch.optim.Muon`` on the hidden matrices and ``torch.optim.AdamW`` on the rest, stepped together
    (LLaMA-Factory's ``use_muon``, which splits the parameters the same way).

    Args:
        lr: Learning rate of both optimizers. With ``adjust_lr: match_rms_adamw`` Muon's step is rescaled by
            ``0.2 * sqrt(max(rows, cols))`` so that AdamW's learning rate and weight decay carry over (Moonshot's
            rule, as LLaMA-Factory's Muon does).
        weight_decay: Decoupled weight decay of both optimizers.
        momentum: Muon's momentum.
        nesterov: Nesterov momentum in Muon.
        ns_steps: Newton-Schulz iterations per Muon step.
        adjust_lr: ``match_rms_adamw`` (Moonshot) or ``original`` (Keller Jordan's ``sqrt(max(1, rows/cols))``).
        adamw_betas: AdamW's betas for the non-matrix parameters.
        adamw_eps: AdamW's epsilon.
    """

    def __init__(
        self,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise LitFactoryError(
                "model.init_args.optimizer: Muon needs torch.optim.Muon (torch >= 2.9), this torch is "
                f"{torch.__version__}. Fix: pip install 'torch>=2.9'."
            )
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.nesterov = nesterov
        self.ns_steps = ns_steps
        self.adjust_lr = adjust_lr
        self.adamw_betas = tuple(adamw_betas)
        self.adamw_eps = adamw_eps

    def split_parameters(self, model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(Muon's, AdamW's): the trainable 2-D weights other than the input embeddings and the output head go to
        Muon, whose orthogonalised update is meant for hidden layers' matrices."""
        outer = {id(module.weight) for module in (model.get_input_embeddings(), model.get_output_embeddings())
                 if module is not None}
        muon, adamw = [], []
        for parameter in model.parameters():
            if parameter.requires_grad:
                (muon if parameter.ndim == 2 and id(parameter) not in outer else adamw).append(parameter)
        if not muon:
            raise LitFactoryError(
                "model.init_args.optimizer: Muon found no trainable hidden weight matrix to optimise. Fix: train the "
                "model's linear layers (e.g. model.init_args.finetuning: Full), or use AdamW."
            )
        return muon, adamw

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from lit_factory.optim.combined import CombinedOptimizer

        muon, adamw = self.split_parameters(model)
        optimizers = [torch.optim.Muon(muon, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
                                       nesterov=self.nesterov, ns_steps=self.ns_steps, adjust_lr_fn=self.adjust_lr)]
        if adamw:
            optimizers.append(torch.optim.AdamW(adamw, lr=self.lr, weight_decay=self.weight_decay,
                                                betas=self.adamw_betas, eps=self.adamw_eps))
        return CombinedOptimizer(optimizers)
