"""PPO maths against the formulas of the papers, computed element by element in plain Python."""

import math

import pytest
import torch

from lit_factory.stages.ppo_losses import (
    AdaptiveKLController,
    generalized_advantages,
    kl_penalised_rewards,
    masked_whiten,
    ppo_losses,
)


@pytest.fixture
def rollout():
    torch.manual_seed(0)
    lengths = [5, 3, 7, 1]
    mask = torch.zeros(4, 7)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    values = torch.randn(4, 7) * mask
    rewards = torch.randn(4, 7) * mask
    return lengths, mask, values, rewards


def test_gae_equals_the_discounted_sum_of_td_errors(rollout):
    lengths, mask, values, rewards = rollout
    gamma, lam = 0.9, 0.8
    advantages, returns = generalized_advantages(rewards, values, mask, gamma, lam)
    for row, length in enumerate(lengths):
        v = values[row].tolist()
        r = rewards[row].tolist()
        deltas = [r[t] + gamma * (v[t + 1] if t + 1 < length else 0.0) - v[t] for t in range(length)]
        for t in range(length):
            expected = sum((gamma * lam) ** l * deltas[t + l] for l in range(length - t))
            assert advantages[row, t].item() == pytest.approx(expected, abs=1e-6)
            assert returns[row, t].item() == pytest.approx(expected + v[t], abs=1e-6)
        assert advantages[row, length:].abs().sum() == 0


def test_kl_penalty_and_score_on_the_last_token(rollout):
    lengths, mask, _, _ = rollout
    logprobs, ref_logprobs = torch.randn(4, 7), torch.randn(4, 7)
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])
    beta = 0.3
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, beta)
    for row, length in enumerate(lengths):
        for t in range(7):
            expected = -beta * (logprobs[row, t] - ref_logprobs[row, t]).item() if t < length else 0.0
            if t == length - 1:
                expected += scores[row].item()
            assert rewards[row, t].item() == pytest.approx(expected, abs=1e-6)


def test_clipped_policy_and_value_losses(rollout):
    lengths, mask, values, _ = rollout
    torch.manual_seed(1)
    logprobs, old_logprobs = torch.randn(4, 7) * 0.3, torch.randn(4, 7) * 0.3
    advantages, returns = torch.randn(4, 7), torch.randn(4, 7)
    old_values, entropy = values + torch.randn(4, 7) * 0.5, torch.rand(4, 7)
    eps, eps_v = 0.2, 0.1
    terms = ppo_losses(logprobs, old_logprobs, advantages, values, old_values, returns, entropy, mask, eps, eps_v)

    policy, value, clipped, ent, count = 0.0, 0.0, 0, 0.0, 0
    for row, length in enumerate(lengths):
        for t in range(length):
            ratio = math.exp(logprobs[row, t] - old_logprobs[row, t])
            a = advantages[row, t].item()
            surrogate = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)  # the paper's L^CLIP (maximised)
            policy += -surrogate
            clipped += (-a * min(max(ratio, 1 - eps), 1 + eps)) > (-a * ratio)
            v, v_old, ret = values[row, t].item(), old_values[row, t].item(), returns[row, t].item()
            v_clip = v_old + min(max(v - v_old, -eps_v), eps_v)
            value += 0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2)
            ent += entropy[row, t].item()
            count += 1
    assert terms.policy.item() == pytest.approx(policy / count, abs=1e-6)
    assert terms.value.item() == pytest.approx(value / count, abs=1e-6)
    assert terms.entropy.item() == pytest.approx(ent / count, abs=1e-6)
    assert terms.clip_fraction.item() == pytest.approx(clipped / count, abs=1e-6)


def test_masked_whitening_uses_only_real_tokens(rollout):
    _, mask, values, _ = rollout
    whitened = masked_whiten(values + 3.0, mask)
    real = whitened[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-5)


def test_adaptive_kl_controller_follows_ziegler_et_al():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    controller.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    fixed = AdaptiveKLController(0.2, target=None, horizon=10000)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.2
