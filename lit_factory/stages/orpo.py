"""Odds Ratio Preference Optimization (arXiv 2403.07691): SFT plus an odds-ratio term, no reference model."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lit_factory.data import objectives
from lit_factory.stages.preference import PreferenceStage, require_batch, reward_metrics


def log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012); torch has no fused op for it."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class ORPO(PreferenceStage):
    """ORPO on pairwise batches (first n rows chosen, last n rejected).

    With P = exp(mean token log-probability of a response) and odds = P / (1 - P), the loss is
    L_SFT + λ · −log σ(log odds(chosen) − log odds(rejected)) (paper, eqs. 2–7). L_SFT is the negative
    log-likelihood of the chosen responses' tokens, a mean over every chosen-response token of the optimizer step
    (all micro-batches and ranks, see ``Stage.token_mean``) as TRL's token-level cross-entropy is over a batch;
    the odds-ratio term stays a mean over pairs, as in TRL.

    Args:
        beta: λ, the weight of the odds-ratio term.
        **kwargs: The ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps).
    """

    data_objective = objectives.Pairwise

    def __init__(self, beta: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.beta = beta

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        require_batch(batch, ("input_ids", "attention_mask", "labels"), "ORPO", self.data_objective)
        logps, counts = self.policy_logps(batch)
        chosen, rejected = (logps / counts.clamp(min=1)).chunk(2)
        log_odds_ratio = (chosen - rejected) - (log1m_exp(chosen) - log1m_exp(rejected))
        chosen_logps, chosen_counts = logps.chunk(2)[0], counts.chunk(2)[0]
        nll = self.token_mean(-chosen_logps.sum(), chosen_counts.sum())
        odds_ratio_loss = -F.logsigmoid(log_odds_ratio).mean()

        self.log_metrics({
            "nll": -chosen_logps.detach().sum() / chosen_counts.sum().clamp(min=1),  # this batch's token mean
            "log_odds_ratio": log_odds_ratio.mean(),
            **reward_metrics(self.beta * chosen, self.beta * rejected),
        }, batch_size=len(chosen))
        return nll + self.beta * odds_ratio_loss
