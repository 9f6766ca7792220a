"""Direct Preference Optimization (arXiv 2305.18290) with the sigmoid, IPO and hinge losses and DPO-ftx."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_factory.data import objectives
from lit_factory.errors import LitFactoryError
from lit_factory.stages.preference import ReferenceStage, require_batch, reward_metrics


class DPO(ReferenceStage):
    """DPO on pairwise batches (first n rows chosen, last n rejected), against a frozen reference policy.

    The per-pair losses are averaged over the batch's pairs (and over the micro-batches and ranks of a step), as
    TRL does; only the DPO-ftx term is token-level.

    Args:
        beta: β, the strength of the pull towards the reference (for IPO: the regularisation τ).
        loss_type: ``sigmoid`` (DPO), ``ipo`` (arXiv 2310.12036, on per-token mean log-ratios as in TRL) or
            ``hinge`` (SLiC, arXiv 2305.10425).
        label_smoothing: ε of conservative DPO: the chance a preference label is flipped (``sigmoid`` only).
        sft_weight: γ of DPO-ftx: adds γ times the token-mean negative log-likelihood of the chosen responses,
            averaged over every chosen-response token of the optimizer step (all micro-batches and ranks, see
            ``Stage.token_mean``). The preference loss itself stays a mean over pairs, as in TRL.
        **kwargs: ``reference`` and the ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps).
    """

    data_objective = objectives.Pairwise

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not 0 <= label_smoothing < 0.5:
            raise LitFactoryError(
                f"model.init_args.label_smoothing: {label_smoothing} is outside [0, 0.5). Fix: set it in [0, 0.5), "
                "e.g. 0.1."
            )
        if label_smoothing and loss_type != "sigmoid":
            raise LitFactoryError(
                f"model.init_args.label_smoothing: only the sigmoid loss uses it, not {loss_type!r}. Fix: set it to 0 "
                "(or model.init_args.loss_type: sigmoid)."
            )
        super().__init__(**kwargs)
        self.beta, self.loss_type, self.label_smoothing, self.sft_weight = beta, loss_type, label_smoothing, sft_weight

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        require_batch(batch, ("input_ids", "attention_mask", "labels"), "DPO", self.data_objective)
        logps, counts = self.policy_logps(batch)
        ref_logps = self.reference_logps(batch)
        chosen_logratios, rejected_logratios = (logps - ref_logps).chunk(2)
        delta = chosen_logratios - rejected_logratios
        if self.loss_type == "sigmoid":
            eps = self.label_smoothing
            losses = -(1 - eps) * F.logsigmoid(self.beta * delta) - eps * F.logsigmoid(-self.beta * delta)
        elif self.loss_type == "hinge":
            losses = torch.relu(1 - self.beta * delta)
        else:  # ipo: the squared distance of the per-token log-ratio margin from 1/(2β)
            chosen_counts, rejected_counts = counts.clamp(min=1).chunk(2)
            ipo_delta = chosen_logratios / chosen_counts - rejected_logratios / rejected_counts
            losses = (ipo_delta - 1 / (2 * self.beta)) ** 2
        loss = losses.mean()
        if self.sft_weight:
            chosen_logps, chosen_counts = logps.chunk(2)[0], counts.chunk(2)[0]
            loss = loss + self.sft_weight * self.token_mean(-chosen_logps.sum(), chosen_counts.sum())

        self.log_metrics(reward_metrics(self.beta * chosen_logratios, self.beta * rejected_logratios),
                         batch_size=len(delta))
        return loss
