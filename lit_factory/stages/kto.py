"""Kahneman-Tversky Optimization (arXiv 2402.01306): unpaired desirable/undesirable responses."""

from __future__ import annotations

from typing import Any

import torch

from lit_factory.data import objectives
from lit_factory.stages.preference import ReferenceStage, require_batch


class KTO(ReferenceStage):
    """KTO on batches of (prompt, response) rows tagged desirable or not, against a frozen reference policy.

    The reference point z₀ (the KL between policy and reference) is estimated on the batch's mismatched pairs
    (prompt i with the response of another row: ``kl_*`` keys), detached and clipped at 0 as in the paper.

    Args:
        beta: β, the strength of the pull towards the reference.
        desirable_weight: λ_D, the weight of the desirable rows' losses.
        undesirable_weight: λ_U, the weight of the undesirable rows' losses. The paper advises
            λ_D·n_D / (λ_U·n_U) in [1, 4/3].
        **kwargs: ``reference`` and the ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps).
    """

    data_objective = objectives.KTO
    reference_prefixes = ("", "kl_")

    def __init__(
        self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        require_batch(batch, ("input_ids", "labels", "kto_tags", "kl_input_ids", "kl_labels"), "KTO",
                      self.data_objective)
        logratios = self.policy_logps(batch)[0] - self.reference_logps(batch)
        with torch.no_grad():
            kl = (self.policy_logps(batch, "kl_")[0] - self.reference_logps(batch, "kl_")).mean()
            if self._trainer is not None and self.trainer.world_size > 1:
                kl = self.all_gather(kl).mean()
            kl = kl.clamp(min=0)
        desirable = batch["kto_tags"].bool()
        chosen_logratios, rejected_logratios = logratios[desirable], logratios[~desirable]
        losses = torch.cat([
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (chosen_logratios - kl))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - rejected_logratios))),
        ])

        metrics = {"kl": kl}
        # Pooled over the ranks' rows, so every rank logs the same names (a rank may hold no desirable rows). The rows
        # are unpaired, so there is no accuracy and the margin is a difference of means (not `reward_metrics`).
        chosen_reward, rejected_reward = self.pooled_mean(chosen_logratios), self.pooled_mean(rejected_logratios)
        if chosen_reward is not None:
            metrics["rewards/chosen"] = self.beta * chosen_reward
        if rejected_reward is not None:
            metrics["rewards/rejected"] = self.beta * rejected_reward
        if chosen_reward is not None and rejected_reward is not None:
            metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        self.log_metrics(metrics, batch_size=len(logratios))
        return losses.mean()
