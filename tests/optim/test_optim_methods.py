"""Optimizers from LLaMA-Factory's examples/extras, each through the package that owns it: APOLLO scales the raw
gradient per channel, Adam-mini keeps one second moment per head, Muon orthogonalises the hidden matrices' momentum
(against LLaMA-Factory's reference Newton-Schulz), GaLore's layer-wise mode steps each parameter during backward
exactly as the grouped optimizer would, BAdam's ratio mode updates a fixed share of each matrix; all lower the loss."""

import importlib.util
from functools import partial

import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import ModelArgs, build_model, build_tokenizer
from lit_factory.optim import APOLLO, AdamMini, BAdamRatio, GaLore, Muon
from lit_factory.stages import SFT
from lit_factory.stages.lm_head import causal_lm_loss
from test_optim import fit, tiny_args
from tiny_models import DEMO, quiet_trainer

needs_apollo = pytest.mark.skipif(importlib.util.find_spec("apollo_torch") is None,
                                  reason="the apollo-torch package is not installed (pip install apollo-torch)")
needs_adam_mini = pytest.mark.skipif(importlib.util.find_spec("adam_mini") is None,
                                     reason="the adam-mini package is not installed (pip install adam-mini)")
needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")


def first_batch(tokenizer):
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def backward(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = causal_lm_loss(logits, batch["labels"])
    loss.backward()
    return loss


def one_step(model, optimizer, batch):
    """Gradients of one batch, and how every parameter moved in one optimizer step on them."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backward(model, batch)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def tiny_model(seed: int = 0):
    args = tiny_args()
    tokenizer = build_tokenizer(args)
    torch.manual_seed(seed)
    return build_model(args, tokenizer), tokenizer


def lowers_the_loss(recorder) -> bool:
    return min(recorder.losses[-3:]) < recorder.losses[0] - 0.3


@needs_apollo
def test_apollo_scales_the_raw_gradient_per_channel():
    model, tokenizer = tiny_model()
    optimizer = APOLLO(lr=1e-3, rank=4, scale=16.0).build(model)
    grads, moved = one_step(model, optimizer, first_batch(tokenizer))
    name = "model.layers.0.mlp.down_proj.weight"  # [64, 128]: the 64 rows are projected to 4, 128 channels remain
    ratio = moved[name] / grads[name]
    # APOLLO's update is the raw gradient times one factor per channel (estimated in the rank-4 projection).
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=2e-3, atol=1e-9)  # float32 division
    assert ratio[0].std() > 0  # not one factor for the whole matrix: the channels differ


@needs_apollo
def test_apollo_trains_in_a_stage(tmp_path):
    recorder = fit(SFT(tiny_args(), None, APOLLO(lr=3e-3, rank=4, scale=1.0)), tmp_path, 12)
    assert lowers_the_loss(recorder)


@needs_adam_mini
def test_adam_mini_keeps_one_second_moment_per_head_and_trains(tmp_path):
    stage = SFT(tiny_args(), None, AdamMini(lr=3e-3))
    recorder = fit(stage, tmp_path, 12)
    optimizer, layer = stage.trainer.optimizers[0], stage.model.model.layers[0]
    assert optimizer.state[layer.self_attn.q_proj.weight]["vmean"].shape == (4, 1)  # 4 query heads
    assert optimizer.state[layer.self_attn.k_proj.weight]["vmean"].shape == (2, 1)  # 2 key-value heads
    assert optimizer.state[layer.mlp.down_proj.weight]["vmean"].shape == (64, 1)  # one per output neuron
    assert lowers_the_loss(recorder)


def newton_schulz_reference(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """LLaMA-Factory's ``zeropower_via_newtonschulz5`` (src/llamafactory/third_party/muon/muon.py)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.bfloat16()
    if g.size(0) > g.size(1):
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.size(0) > g.size(1) else x


@needs_muon
def test_muon_orthogonalises_hidden_matrices_and_adamw_takes_the_rest():
    model, tokenizer = tiny_model()
    factory = Muon(lr=1e-3, momentum=0.95)
    muon, adamw = factory.split_parameters(model)
    hidden = {id(p) for p in muon}
    assert id(model.get_input_embeddings().weight) not in hidden and id(model.lm_head.weight) not in hidden
    assert all(p.ndim == 2 for p in muon) and all(p.ndim == 1 or id(p) not in hidden for p in adamw)
    assert len(muon) == 2 * 7  # q, k, v, o, gate, up, down of both layers
    grads, moved = one_step(model, factory.build(model), first_batch(tokenizer))
    name = "model.layers.0.mlp.down_proj.weight"
    # First step: the momentum is a multiple of g (torch keeps an EMA, LLaMA-Factory a sum; Newton-Schulz normalises
    # the scale away); the update is the orthogonalised matrix times lr * 0.2 * sqrt(max(rows, cols)) (Moonshot's
    # AdamW-matching rule, as LLaMA-Factory's Muon). Both iterate in bfloat16: equal to ~1%.
    expected = -1e-3 * 0.2 * 128 ** 0.5 * newton_schulz_reference(grads[name]).float()
    cosine = torch.nn.functional.cosine_similarity(moved[name].flatten(), expected.flatten(), dim=0)
    assert cosine > 0.98 and moved[name].norm() / expected.norm() == pytest.approx(1, abs=0.02)
    # ... and far from a step along the raw gradient, which is what orthogonalising changes.
    assert torch.nn.functional.cosine_similarity(moved[name].flatten(), -grads[name].flatten(), dim=0) < 0.9


@needs_muon
def test_muon_trains_in_a_stage(tmp_path):
    recorder = fit(SFT(tiny_args(), None, Muon(lr=3e-3)), tmp_path, 12)
    assert lowers_the_loss(recorder)


def test_galore_layerwise_steps_each_parameter_in_backward_as_the_grouped_optimizer_does():
    options = dict(lr=2e-3, rank=4, update_interval=50, scale=1.0)
    grouped_model, tokenizer = tiny_model(seed=1)
    layerwise_model, _ = tiny_model(seed=1)
    batch = first_batch(tokenizer)
    grouped = GaLore(**options).build(grouped_model)
    layerwise = GaLore(**options, layerwise=True).build(layerwise_model)
    for _ in range(2):
        grouped.zero_grad()
        backward(grouped_model, batch)
        grouped.step()
        with torch.enable_grad():
            layerwise.step(lambda: backward(layerwise_model, batch))
        # The hooks freed every gradient as soon as its parameter was updated.
        assert all(p.grad is None for p in layerwise_model.parameters())
    for (name, ours), reference in zip(layerwise_model.named_parameters(), grouped_model.parameters()):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6, msg=name)


def test_galore_layerwise_follows_the_schedule_and_refuses_accumulation(tmp_path):
    stage = SFT(tiny_args(), None, GaLore(lr=2e-3, rank=4, scale=1.0, layerwise=True), lr_schedule="linear",
                warmup_steps=4)
    recorder = fit(stage, tmp_path, 12)
    inner = stage.trainer.optimizers[0].optimizers
    # The schedule acts on every per-parameter optimizer: linear decay to 0 at step 12, so 0 after the last step.
    assert {group["lr"] for optimizer in inner for group in optimizer.param_groups} == {0.0}
    assert lowers_the_loss(recorder)
    stage = SFT(tiny_args(), None, GaLore(rank=4, layerwise=True))
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=2, shuffle=False)
    with pytest.raises(LitFactoryError, match="accumulate_grad_batches: 1"):
        quiet_trainer(tmp_path, 2, accumulate_grad_batches=2).fit(stage, datamodule=data)


def test_badam_ratio_updates_the_chosen_share_of_each_matrix(tmp_path):
    stage = SFT(tiny_args(), None, BAdamRatio(lr=3e-3, update_ratio=0.1, switch_every=100))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    recorder = fit(stage, tmp_path, 12)
    after = dict(stage.model.named_parameters())
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        changed = (after[name] != before[name]).sum().item()
        assert changed == int(after[name].numel() * 0.1), name  # the same 10% all along (one phase)
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    assert recorder.losses[-1] < recorder.losses[0]
    stage = SFT(tiny_args(), None, BAdamRatio())
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=2, shuffle=False)
    with pytest.raises(LitFactoryError, match="gradient_clip_val: null"):
        quiet_trainer(tmp_path, 1, gradient_clip_val=1.0).fit(stage, datamodule=data)
    with pytest.raises(LitFactoryError, match="full fine-tuning"):
        from lit_factory.model import LoRA

        args = tiny_args()
        BAdamRatio().build(build_model(args, build_tokenizer(args), LoRA(r=2)))


def test_missing_packages_are_one_line_errors(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("apollo_torch", "adam_mini") else real(name, *a))
    with pytest.raises(LitFactoryError, match=r"APOLLO needs the apollo-torch package \(pip install apollo-torch\)"):
        APOLLO()
    with pytest.raises(LitFactoryError, match=r"AdamMini needs the adam-mini package \(pip install adam-mini\)"):
        AdamMini()
