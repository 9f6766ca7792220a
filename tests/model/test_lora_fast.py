"""The fused LoRA autograd function: gradients equal PEFT's (autograd through lora_A/lora_B) to 1e-5 in float32,
and a whole model trains identically with it on or off."""

import pytest
import torch

from lit_factory.model import LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.model.lora_fast import LoRALinearFunction, use_fast_lora
from lit_factory.model.patches import FastLoRA
from tiny_models import SPARROW, TINY


@pytest.mark.parametrize("bias", [True, False])
def test_function_gradients_equal_autograd_of_the_peft_formula(bias):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32, requires_grad=True)
    weight, lora_a, lora_b = torch.randn(48, 32), torch.randn(4, 32, requires_grad=True), torch.randn(48, 4, requires_grad=True)
    b = torch.randn(48) if bias else None
    ours = LoRALinearFunction.apply(x, weight, b, lora_a, lora_b, 0.5)
    reference = torch.nn.functional.linear(x, weight, b) + (x @ lora_a.t() @ lora_b.t()) * 0.5
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    upstream = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (x, lora_a, lora_b), upstream)
    expected = torch.autograd.grad(reference, (x, lora_a, lora_b), upstream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_model_gradients_with_fast_lora_equal_peft():
    args = ModelArgs(config=dict(TINY), tokenizer=SPARROW)
    tokenizer = build_tokenizer(args)
    torch.manual_seed(0)
    peft_model = build_model(args, tokenizer, LoRA(r=4, alpha=8))
    torch.manual_seed(0)
    fast = build_model(ModelArgs(config=dict(TINY), tokenizer=SPARROW, patches=[FastLoRA()]), tokenizer,
                       LoRA(r=4, alpha=8))
    fast.load_state_dict(peft_model.state_dict())
    for name, p in fast.named_parameters():  # non-zero B, so every gradient path is exercised
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
            peft_model.get_parameter(name).data.copy_(p.data)
    ids = tokenizer(["The capital of Peru is Lima.", "Sparrows sing."], return_tensors="pt", padding=True)
    for model in (peft_model, fast):
        model.train()
        model(**ids, labels=ids["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * 7 * 2
    for name, p in fast.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=1e-5)
    assert use_fast_lora(fast) == 14  # every projection of both layers was switched


def test_fast_lora_falls_back_to_peft_when_merged_or_with_dropout():
    args = ModelArgs(config=dict(TINY), tokenizer=SPARROW, patches=[FastLoRA()])
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, LoRA(r=4, dropout=0.5)).train()
    ids = tokenizer("The capital of Peru is Lima.", return_tensors="pt")
    calls = []
    original = LoRALinearFunction.apply
    LoRALinearFunction.apply = staticmethod(lambda *a: calls.append(1) or original(*a))
    try:
        model(**ids)
        assert not calls  # dropout in training: PEFT's forward
        model.eval()(**ids)
        assert calls  # dropout is off in eval: the fused path
    finally:
        LoRALinearFunction.apply = original
