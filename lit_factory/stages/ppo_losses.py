"""The tensor maths of PPO for language models (Schulman et al. 2017, arXiv 1707.06347; as applied to RLHF by
Ziegler et al. 2019, arXiv 1909.08593): per-token KL-penalised rewards, GAE, and the clipped losses.

Every tensor is ``[batch, response_length]`` with a ``mask`` that is 1 on real response tokens (up to and including
the first eos) and 0 on padding. Written here rather than imported because trl 1.x no longer ships its PPO helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance (and zero mean if ``shift_mean``) over the masked positions (unbiased variance)."""
    mean = masked_mean(values, mask)
    centred = values - mean
    variance = masked_mean(centred**2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * (log π - log π_ref)``, plus each sequence's score on its last response token.

    Returns ``(rewards, kl)`` where ``kl`` is the per-token estimate ``log π - log π_ref`` (zero on padding).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.cumsum(-1).argmax(-1)  # index of the last real token of each row
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016): ``A_t = Σ_l (γλ)^l δ_{t+l}``, ``δ_t = r_t + γ V_{t+1} - V_t``; returns ``A + V``.

    Values after the last real token count as 0 (the episode has ended).
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.size(1)
    for t in reversed(range(length)):
        # Rewards and values are 0 on padding, so the recursion carries nothing back from past a row's end.
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class PPOLosses:
    """The terms of one PPO minibatch update and its diagnostics."""

    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def ppo_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
) -> PPOLosses:
    """Clipped surrogate policy loss, clipped value loss (½·max of squared errors), mean entropy, clip fraction."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    policy = masked_mean(torch.maximum(unclipped, clipped), mask)

    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    value = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2), mask)

    return PPOLosses(
        policy=policy,
        value=value,
        entropy=masked_mean(entropy, mask),
        clip_fraction=masked_mean((clipped > unclipped).float(), mask),
        approx_kl=0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
    )


class AdaptiveKLController:
    """Ziegler et al. (2019) §2.2: ``β ← β (1 + clip(KL/target − 1, −0.2, 0.2) · n_steps / horizon)``.

    Args:
        init_kl_coef: Starting β.
        target: The KL (nats per sequence) to steer towards; ``None`` keeps β fixed.
        horizon: How many samples it takes to close the gap.
    """

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
