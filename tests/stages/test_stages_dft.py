"""DFT (arXiv 2508.05629): the loss is -sg(p) log p per target token, averaged like SFT's; its gradient is
cross-entropy's rescaled per token by p; the stage trains and LLaMA-Factory's use_dft_loss selects it."""

from functools import partial

import pytest
import torch

from lit_factory.compat.llamafactory import translate
from lit_factory.stages import DFT, SFT
from lit_factory.stages.dft import dft_loss_sum
from test_optim import fit, tiny_args
from test_optim_methods import first_batch


def reference_dft(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's objective written from probabilities: mean over target tokens of -p.detach() * log p."""
    probs = torch.softmax(logits.double()[:, :-1], dim=-1)
    targets = labels[:, 1:]
    mask = targets != -100
    p = probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(p.detach() * torch.log(p))[mask].sum() / mask.sum()


def test_dft_loss_and_gradient_match_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    ours = dft_loss_sum(logits, labels) / (labels[:, 1:] != -100).sum()
    reference = reference_dft(logits, labels)
    torch.testing.assert_close(ours.double(), reference)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours_grad.double(), reference_grad, rtol=1e-5, atol=1e-7)
    # The weight is detached: the gradient is NOT that of -p log p taken through p.
    p = torch.softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = labels[:, 1:] != -100
    (through_p,) = torch.autograd.grad(-(p * p.log())[mask].mean(), logits)
    assert not torch.allclose(ours_grad.double(), through_p.double(), atol=1e-4)


def test_dft_stage_loss_is_the_formula_on_the_model_logits_and_trains(tmp_path):
    stage = DFT(tiny_args(), optimizer=partial(torch.optim.AdamW, lr=3e-3))
    stage.configure_model()
    batch = first_batch(stage.tokenizer)
    with torch.no_grad():
        logits = stage.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert float(stage.loss(batch)) == pytest.approx(float(reference_dft(logits, batch["labels"])), rel=1e-5)
        assert float(stage.loss(batch)) < float(SFT.loss(stage, batch))  # p < 1 shrinks every token's term
        cross_entropy = float(SFT.loss(stage, batch))
    # -p log p grows with p below 1/e (a random model's p is about 1/vocabulary), so the DFT loss itself rises as
    # training works; what must fall is the targets' cross-entropy.
    fit(stage, tmp_path, 12)
    with torch.no_grad():
        assert float(SFT.loss(stage, batch)) < cross_entropy - 0.3


def test_llamafactory_use_dft_loss_selects_the_stage():
    recipe = translate({"model_name_or_path": "m", "stage": "sft", "dataset": "d", "use_dft_loss": True}).recipe
    assert recipe["model"]["class_path"] == "lit_factory.stages.DFT"
