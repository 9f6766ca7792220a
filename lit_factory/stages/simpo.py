"""Simple Preference Optimization (arXiv 2405.14734): length-normalised rewards with a margin, no reference."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lit_factory.data import objectives
from lit_factory.stages.preference import PreferenceStage, require_batch, reward_metrics


class SimPO(PreferenceStage):
    """SimPO on pairwise batches (first n rows chosen, last n rejected).

    The implicit reward of a response is β times its mean token log-probability; the loss is
    −log σ(r(chosen) − r(rejected) − γ) (paper, eq. 6), a mean over pairs (as in TRL): it has no token-level term.

    Args:
        beta: β, the scale of the length-normalised reward (the paper uses 2.0–2.5).
        gamma: γ, the target reward margin (the paper uses 0.5–1.5).
        **kwargs: The ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps).
    """

    data_objective = objectives.Pairwise

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta, self.gamma = beta, gamma

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        require_batch(batch, ("input_ids", "attention_mask", "labels"), "SimPO", self.data_objective)
        logps, counts = self.policy_logps(batch)
        chosen_rewards, rejected_rewards = (self.beta * logps / counts.clamp(min=1)).chunk(2)
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards - self.gamma)

        self.log_metrics(reward_metrics(chosen_rewards, rejected_rewards), batch_size=len(losses))
        return losses.mean()
