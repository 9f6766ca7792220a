"""Preference losses against references, for fixed random logits (float64): TRL's DPOTrainer, KTOTrainer and
RewardTrainer loss code (called on a lightweight stand-in for the trainer), the ORPO and SimPO papers' formulas."""

from collections import defaultdict
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_factory.model import ModelArgs
from lit_factory.stages import DPO, KTO, ORPO, RewardModel, SimPO
from tiny_models import SPARROW, TINY

VOCAB, LENGTH = 40, 14


class RandomLogits(nn.Module):
    """A fixed random 'model': logits are a function of (token, position), so equal inputs give equal logits."""

    def __init__(self, seed: int, scale: float = 3.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("by_token", scale * torch.randn(VOCAB, VOCAB, generator=generator, dtype=torch.float64))
        self.register_buffer("by_position", torch.randn(LENGTH, VOCAB, generator=generator, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.by_token[input_ids] + self.by_position[: input_ids.size(1)])


class TRLModel:
    """What TRL's trainers call: ``model(..., labels=..., fused_lm_head=True)`` -> per-token log-probs."""

    def __init__(self, logits_model: RandomLogits) -> None:
        self.logits_model = logits_model

    def __call__(self, input_ids, attention_mask=None, labels=None, **_):
        logits = self.logits_model(input_ids).logits[:, :-1]
        targets = labels[:, 1:]
        log_probs = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        log_probs = log_probs.masked_fill(targets == -100, 0.0)
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trl_self(**attributes) -> SimpleNamespace:
    """The attributes TRL's ``_compute_loss`` reads from the trainer, for one process and precomputed references."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    base = dict(model=SimpleNamespace(training=True), accelerator=accelerator, precompute_ref_logps=True,
                aux_loss_enabled=False, ld_alpha=None, f_divergence_type="reverse_kl", use_weighting=False,
                label_smoothing=0.0, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                _tp_size=1, calculate_KL=True, loss_type="kto")
    base.update(attributes)
    return SimpleNamespace(**base)


def random_rows(rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response rows with labels only on the response."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (rows, LENGTH), generator=generator)
    attention_mask = torch.zeros(rows, LENGTH, dtype=torch.long)
    labels = torch.full((rows, LENGTH), -100)
    for row in range(rows):
        length = int(torch.randint(7, LENGTH + 1, (1,), generator=generator))
        prompt = int(torch.randint(2, 5, (1,), generator=generator))
        input_ids[row, length:] = 0
        attention_mask[row, :length] = 1
        labels[row, prompt:length] = input_ids[row, prompt:length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def stage_with(cls, policy: nn.Module, reference_model: nn.Module = None, **options):
    stage = cls(model=ModelArgs(config=TINY, tokenizer=SPARROW), **options)
    stage.model = policy
    if reference_model is not None:
        stage.reference_model = reference_model
    return stage


def trl_sequence_logps(model: TRLModel, rows: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    labels = rows[prefix + "labels"]
    return model(rows[prefix + "input_ids"], labels=labels).log_probs.sum(-1)


@pytest.mark.parametrize("loss_type, label_smoothing, sft_weight", [
    ("sigmoid", 0.0, 0.0), ("hinge", 0.0, 0.0), ("ipo", 0.0, 0.0), ("sigmoid", 0.0, 0.7), ("sigmoid", 0.2, 0.0),
])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(loss_type, label_smoothing, sft_weight, beta):
    from trl import DPOTrainer

    policy, reference = RandomLogits(1), RandomLogits(2)
    batch = random_rows(8, seed=3)
    stage = stage_with(DPO, policy, reference, reference="copy", beta=beta, loss_type=loss_type,
                       label_smoothing=label_smoothing, sft_weight=sft_weight)
    ours = stage.loss(batch)

    ref_chosen, ref_rejected = trl_sequence_logps(TRLModel(reference), batch).chunk(2)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    if label_smoothing:
        # TRL 1.16's sigmoid loss has no label smoothing; its "aot" loss on a single pair is exactly conservative
        # DPO's -(1-ε) log σ(βΔ) - ε log σ(-βΔ) (sorting one pair changes nothing), so average it over the pairs.
        n = len(ref_chosen)
        expected = torch.stack([
            DPOTrainer._compute_loss(
                trl_self(beta=beta, loss_types=["aot"], loss_weights=[1.0], label_smoothing=label_smoothing),
                TRLModel(policy),
                {key: value[[i, n + i]] if value.size(0) == 2 * n else value[[i]] for key, value in inputs.items()},
                False)
            for i in range(n)]).mean()
    else:
        types, weights = [loss_type], [1.0]
        if sft_weight:
            types, weights = [loss_type, "sft"], [1.0, sft_weight]
        expected = DPOTrainer._compute_loss(trl_self(beta=beta, loss_types=types, loss_weights=weights),
                                            TRLModel(policy), inputs, False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert ours.item() > 0


@pytest.mark.parametrize("desirable_weight, undesirable_weight, tags", [
    (1.0, 1.0, [1, 0, 1, 1, 0, 0]), (1.0, 1.33, [1, 1, 1, 1, 0, 1]), (0.8, 1.0, [0, 0, 0, 0, 0, 0]),
])
def test_kto_matches_trl(desirable_weight, undesirable_weight, tags):
    from trl import KTOTrainer

    policy, reference = RandomLogits(4), RandomLogits(5, scale=1.0)
    rows, mismatched = random_rows(6, seed=6), random_rows(6, seed=7)
    batch = {**rows, **{"kl_" + key: value for key, value in mismatched.items()},
             "kto_tags": torch.tensor(tags, dtype=torch.bool)}
    stage = stage_with(KTO, policy, reference, reference="copy", beta=0.3, desirable_weight=desirable_weight,
                       undesirable_weight=undesirable_weight)
    ours = stage.loss(batch)

    trl_reference = TRLModel(reference)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(), "label": torch.tensor(tags),
              "KL_input_ids": batch["kl_input_ids"], "KL_attention_mask": batch["kl_attention_mask"],
              "KL_completion_mask": (batch["kl_labels"] != -100).long(),
              "ref_logps": trl_sequence_logps(trl_reference, batch),
              "ref_KL_logps": trl_sequence_logps(trl_reference, batch, "kl_")}
    trainer = trl_self(beta=0.3, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    trainer._compute_kl_logps = partial(KTOTrainer._compute_kl_logps, trainer)
    expected = KTOTrainer._compute_loss(trainer, TRLModel(policy), inputs, False)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert trainer._metrics["train"]["kl"][0] >= 0


def paper_mean_logps(model: RandomLogits, rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """(1/|y|) Σ_t log π(y_t | x, y_<t) over the response tokens, written out token by token."""
    logits = model(rows["input_ids"]).logits
    means = []
    for row in range(len(logits)):
        positions = [t for t in range(1, LENGTH) if rows["labels"][row, t] != -100]
        logps = [torch.log_softmax(logits[row, t - 1], -1)[rows["labels"][row, t]] for t in positions]
        means.append(torch.stack(logps).mean())
    return torch.stack(means)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_matches_the_paper(beta):
    policy, batch = RandomLogits(8, scale=0.5), random_rows(8, seed=9)
    ours = stage_with(ORPO, policy, beta=beta).loss(batch)

    chosen, rejected = paper_mean_logps(policy, batch).chunk(2)
    odds = lambda mean_logp: torch.exp(mean_logp) / (1 - torch.exp(mean_logp))  # noqa: E731 (eq. 3)
    log_odds_ratio = torch.log(odds(chosen) / odds(rejected))  # eq. 7 inside the log-sigmoid
    # L_SFT as TRL's ORPOTrainer computes it: one token-level cross-entropy over all chosen-response tokens.
    logits, labels = policy(batch["input_ids"]).logits, batch["labels"]
    n = len(chosen)
    nll = F.cross_entropy(logits[:n, :-1].reshape(-1, logits.size(-1)), labels[:n, 1:].reshape(-1), ignore_index=-100)
    expected = nll + beta * (-torch.log(torch.sigmoid(log_odds_ratio))).mean()  # eqs. 5-6
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("beta, gamma", [(2.0, 0.5), (2.5, 1.4)])
def test_simpo_matches_the_paper(beta, gamma):
    policy, batch = RandomLogits(10), random_rows(8, seed=11)
    ours = stage_with(SimPO, policy, beta=beta, gamma=gamma).loss(batch)

    chosen, rejected = paper_mean_logps(policy, batch).chunk(2)
    expected = -torch.log(torch.sigmoid(beta * chosen - beta * rejected - gamma)).mean()  # eq. 6
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_reward_scores_match_sequence_classification_and_loss_matches_trl():
    """Our last-non-pad value equals transformers' sequence-classification pooling; the loss equals TRL's."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from trl import RewardTrainer

    torch.manual_seed(0)
    stage = RewardModel(model=ModelArgs(config=TINY, tokenizer=SPARROW, dtype="float32"))
    stage.configure_model()
    with torch.no_grad():
        stage.value_head.summary.bias.zero_()  # transformers' score layer has no bias
    batch = random_rows(6, seed=12)
    pad_id = stage.tokenizer.pad_token_id
    batch["input_ids"] = (batch["input_ids"] + 5).masked_fill(batch["attention_mask"] == 0, pad_id)
    ours = stage.loss(batch)

    options = {k: v for k, v in TINY.items() if k != "model_type"}
    config = AutoConfig.for_model("qwen2", **options, vocab_size=stage.model.config.vocab_size, num_labels=1,
                                  pad_token_id=pad_id)
    classifier = AutoModelForSequenceClassification.from_config(config).eval()
    state = {k: v for k, v in stage.model.state_dict().items() if k.startswith("model.")}
    state["score.weight"] = stage.value_head.summary.weight
    classifier.load_state_dict(state)
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), args=SimpleNamespace(center_rewards_coefficient=None),
                              accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
                              _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    expected = RewardTrainer.compute_loss(trainer, classifier, inputs)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(stage.scores(batch["input_ids"], batch["attention_mask"]),
                                   classifier(**inputs).logits.squeeze(-1), rtol=0, atol=1e-5)
