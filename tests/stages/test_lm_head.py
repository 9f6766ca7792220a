"""The memory-lean loss head (``ChunkedLogits``) against the plain path (``FullLogits``: the model's own
full-vocabulary logits and torch's cross-entropy / log-softmax): same losses, log-probabilities, entropies and
gradients (hidden states, lm_head/tied embeddings, LoRA), for every model type it claims to know, in every stage."""

from functools import partial

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lit_factory.model import LoRA, ModelArgs
from lit_factory.stages import DPO, KTO, ORPO, SFT, PreTrain, SimPO
from lit_factory.stages.lm_head import (
    HEAD_TRANSFORMS,
    ChunkedLogits,
    FullLogits,
    LinearHead,
    linear_cross_entropy_sum,
    linear_head,
    linear_token_logps,
)
from tiny_models import SPARROW, TINY

VOCAB = 96
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def assert_same_gradients(got: dict, expected: dict) -> None:
    """Equal to 1e-5 of each gradient's largest entry: float32 sums in another order differ in the last bits."""
    assert expected and got.keys() == expected.keys()
    for name, grad in expected.items():
        error = float((got[name] - grad).abs().max())
        assert error <= 1e-5 * max(1.0, float(grad.abs().max())), f"{name}: off by {error}"


# ---- the autograd function against the formula ------------------------------------------------------------------
@pytest.mark.parametrize("softcap, scale", [(None, 1.0), (3.0, 1 / 0.7), (None, 2.5)])
def test_token_logps_and_entropy_equal_log_softmax_with_their_gradients(softcap, scale):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=generator)

    def reference(hidden, weight):
        logits = hidden @ weight.T
        logits = softcap * torch.tanh(logits / softcap) if softcap else logits
        log_probs = (scale * logits).log_softmax(-1)
        return log_probs.gather(1, targets[:, None]).squeeze(1), -(log_probs.exp() * log_probs).sum(-1)

    def ours(hidden, weight):
        return linear_token_logps(hidden, weight, targets, softcap, scale, entropy=True, chunk_tokens=3)

    for got, expected in zip(ours(hidden, weight), reference(hidden, weight)):
        torch.testing.assert_close(got, expected)
    # Finite differences check the hand-written backward, chunk boundaries included (7 rows, chunks of 3).
    assert torch.autograd.gradcheck(ours, (hidden, weight))
    if scale == 1.0:  # the summed loss, whose gradients are computed in the forward pass
        summed = partial(linear_cross_entropy_sum, targets=targets, softcap=softcap, chunk_tokens=3)
        torch.testing.assert_close(summed(hidden, weight), -reference(hidden, weight)[0].sum())
        assert torch.autograd.gradcheck(summed, (hidden, weight))
        with torch.no_grad():  # validation: no gradient work, the same value
            torch.testing.assert_close(summed(hidden, weight), -reference(hidden, weight)[0].sum())


# ---- real models: every type in HEAD_TRANSFORMS ------------------------------------------------------------------
def tiny_causal_lm(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    options = {k: v for k, v in TINY.items() if k != "model_type"}
    options.update(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, head_dim=16)
    # Non-trivial logit transforms, so a wrong rule shows.
    options.update({"final_logit_softcapping": 4.0, "logit_scale": 0.5, "logits_scaling": 3.0})
    if model_type == "deepseek_v3":
        options.update(q_lora_rank=None, kv_lora_rank=16, head_dim=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                       first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       n_group=1, topk_group=1, num_key_value_heads=4)
    if model_type in ("mixtral", "qwen2_moe", "qwen3_moe"):
        options.update(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32)
    options.update(overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **options)).float()


def labelled_batch(rows: int = 3, length: int = 12, seed: int = 0):
    """Right-padded rows with a masked prompt and padding: only some positions carry a label."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    for row in range(rows):
        prompt, used = 2 + row, length - 2 * row
        labels[row, :prompt] = -100
        labels[row, used:], attention_mask[row, used:], input_ids[row, used:] = -100, 0, 0
    return input_ids, attention_mask, labels


def losses_and_gradients(head, model, input_ids, attention_mask, labels):
    model.zero_grad()
    loss = head.next_token_loss(model, labels, input_ids=input_ids, attention_mask=attention_mask)
    sums, counts = head.sequence_logps(model, labels, input_ids=input_ids, attention_mask=attention_mask)
    (loss + (sums * torch.tensor([0.3, -1.0, 2.0])).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), sums.detach(), counts, grads


@pytest.mark.parametrize("model_type", sorted(HEAD_TRANSFORMS))
def test_chunked_head_equals_the_models_own_logits(model_type):
    model = tiny_causal_lm(model_type)
    assert not isinstance(linear_head(model), str)
    batch = labelled_batch()
    full = losses_and_gradients(FullLogits(), model, *batch)
    chunked = losses_and_gradients(ChunkedLogits(chunk_tokens=5), model, *batch)
    for got, expected in zip(chunked[:3], full[:3]):
        torch.testing.assert_close(got, expected, **TOLERANCE)
    assert_same_gradients(chunked[3], full[3])


def test_models_with_other_heads_take_the_plain_path_and_say_why():
    model = tiny_causal_lm("phi", partial_rotary_factor=0.5)  # phi's lm_head has a bias
    assert "'phi'" in linear_head(model)
    assert "'gpt2'" in linear_head(tiny_causal_lm("gpt2", n_embd=64, n_layer=1, n_head=4))
    batch = labelled_batch()
    full, chunked = (losses_and_gradients(head, model, *batch) for head in (FullLogits(), ChunkedLogits()))
    for got, expected in zip(chunked[:3], full[:3]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


class LargestLogits(TorchDispatchMode):
    """Records the most rows of any vocabulary-wide tensor an op creates."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.shape[-1] == self.vocab:
                self.rows = max(self.rows, tensor.numel() // self.vocab)
        return out


@pytest.mark.parametrize("head, most_rows", [(ChunkedLogits(chunk_tokens=8), 64), (FullLogits(), 3 * 40)])
def test_only_a_chunk_of_labelled_tokens_is_ever_projected(head, most_rows):
    model = tiny_causal_lm("qwen2", vocab_size=1000, tie_word_embeddings=False)
    batch = labelled_batch(length=40)
    with LargestLogits(1000) as seen:
        head.next_token_loss(model, batch[2], input_ids=batch[0], attention_mask=batch[1]).backward()
    # ChunkedLogits: 8-token chunks (the transposed weight, hidden × vocab = 64 × 1000, is the widest view);
    # FullLogits, the control that shows the probe sees logits: every position of the batch.
    assert seen.rows == most_rows


class _GatherBeforeBackward(torch.autograd.Function):
    """Identity on a module's output whose backward first gathers the module's parameters (ZeRO-3's
    ``PreBackwardFunctionForModule``)."""

    @staticmethod
    def forward(ctx, gather, output):
        ctx.gather = gather
        return output.detach()

    @staticmethod
    def backward(ctx, grad):
        ctx.gather()
        return None, grad


class PartitionedLikeZeroThree:
    """DeepSpeed ZeRO-3's contract without DeepSpeed (it needs CUDA): outside the calls of the module that owns it,
    every parameter's data is empty (``param.data = torch.empty(0)``, as ZeRO-3 releases it, and marked with a
    ``ds_id``); a module's forward pre-hook gathers its parameters, its forward hook releases them and hooks its
    outputs to gather them again for their backward — the hooks ``deepspeed/runtime/zero/parameter_offload.py``
    registers on every module."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.whole, self.hooks = model, {}, []

    def gather(self, parameters) -> None:
        for parameter in parameters:
            parameter.data = self.whole[parameter]

    def release(self, parameters) -> None:
        for parameter in parameters:
            parameter.data = torch.empty(0, dtype=parameter.dtype)

    def __enter__(self):
        for module in self.model.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue

            def after_forward(module, args, output, own=own):
                self.release(own)
                hooked = [_GatherBeforeBackward.apply(partial(self.gather, own), tensor)
                          if isinstance(tensor, torch.Tensor) and tensor.requires_grad else tensor
                          for tensor in (output if isinstance(output, tuple) else (output,))]
                return tuple(hooked) if isinstance(output, tuple) else hooked[0]

            self.hooks += [module.register_forward_pre_hook(lambda module, args, own=own: self.gather(own)),
                           module.register_forward_hook(after_forward)]
        for number, parameter in enumerate(self.model.parameters()):
            self.whole[parameter], parameter.ds_id = parameter.data, number
        self.release(self.whole)
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
        for parameter, data in self.whole.items():
            parameter.data = data
            del parameter.ds_id


@pytest.mark.parametrize("tied", [True, False])
def test_zero3_partitioned_head_is_projected_in_chunks_through_its_module_call(tied):
    """Under ZeRO-3 the head weight is whole only while ``lm_head`` is called (and from its output's backward on):
    the chunked head projects through that call, in chunks, with the plain path's loss, log-probs and gradients."""
    model = tiny_causal_lm("qwen2", vocab_size=1000, tie_word_embeddings=tied)
    batch = labelled_batch(length=40)
    expected = losses_and_gradients(FullLogits(), model, *batch)
    for head, most_rows in ((ChunkedLogits(chunk_tokens=8), 64), (FullLogits(), 3 * 40)):
        with PartitionedLikeZeroThree(model), LargestLogits(1000) as seen:
            assert model.lm_head.weight.numel() == 0  # partitioned: a direct read finds nothing
            assert isinstance(linear_head(model), LinearHead)
            got = losses_and_gradients(head, model, *batch)
        assert seen.rows == most_rows  # the chunks' widest tensor (see above); the control: every position
        for value, reference in zip(got[:3], expected[:3]):
            torch.testing.assert_close(value, reference, **TOLERANCE)
        assert_same_gradients(got[3], expected[3])


# ---- stages -------------------------------------------------------------------------------------------------------
def stage_gradients(stage, batch):
    stage.model.zero_grad()
    loss = stage.loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in stage.model.named_parameters() if p.grad is not None}


def assert_same_stage_results(make_stage, batch):
    results = []
    for head in (FullLogits(), ChunkedLogits(chunk_tokens=7)):
        torch.manual_seed(0)  # the same random model (and LoRA init) for both
        stage = make_stage(loss_head=head)
        stage.configure_model()
        results.append(stage_gradients(stage, batch))
    (full_loss, full_grads), (chunked_loss, chunked_grads) = results
    torch.testing.assert_close(chunked_loss, full_loss, **TOLERANCE)
    assert_same_gradients(chunked_grads, full_grads)


@pytest.mark.parametrize("tied, finetuning", [(True, None), (False, LoRA(r=4, alpha=8, dropout=0.0))])
def test_sft_and_pretrain_losses_and_gradients_match_the_plain_path(tied, finetuning):
    config = dict(TINY, tie_word_embeddings=tied)
    input_ids, attention_mask, labels = labelled_batch()
    input_ids = input_ids % 200 + 3  # Sparrow's vocabulary
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    for stage_class in (SFT, PreTrain):
        assert_same_stage_results(partial(stage_class, ModelArgs(config=config, tokenizer=SPARROW), finetuning),
                                  batch)
    # Packed rows: position ids restart per conversation, no attention mask (the block-diagonal path).
    positions = torch.cat([torch.arange(5), torch.arange(7)]).expand(3, -1)
    packed = dict(batch, position_ids=positions, labels=batch["labels"].masked_fill(positions == 0, -100))
    assert_same_stage_results(partial(SFT, ModelArgs(config=config, tokenizer=SPARROW), finetuning), packed)


def pairwise_batch():
    input_ids, attention_mask, labels = labelled_batch(rows=4, seed=1)
    return dict(input_ids=input_ids % 200 + 3, attention_mask=attention_mask, labels=labels)


@pytest.mark.parametrize("stage_class, options", [
    (DPO, dict(sft_weight=0.5)),  # reference: the same model with the adapter disabled
    (DPO, dict(reference="copy", loss_type="ipo")),
    (ORPO, {}),
    (SimPO, {}),
])
def test_preference_log_probabilities_match_the_plain_path(stage_class, options):
    make = partial(stage_class, model=ModelArgs(config=dict(TINY), tokenizer=SPARROW),
                   finetuning=LoRA(r=4, alpha=8, dropout=0.0), **options)
    assert_same_stage_results(make, pairwise_batch())


def test_kto_log_probabilities_match_the_plain_path():
    batch = pairwise_batch()
    batch.update({f"kl_{key}": value.roll(1, 0) for key, value in list(batch.items())},
                 kto_tags=torch.tensor([1, 0, 1, 0]))
    make = partial(KTO, model=ModelArgs(config=dict(TINY), tokenizer=SPARROW), finetuning=LoRA(r=4, dropout=0.0))
    assert_same_stage_results(make, batch)


@pytest.mark.parametrize("model_type", ["qwen2", "gemma2"])
def test_ppo_response_log_probabilities_and_entropies_match_the_plain_path(model_type):
    import peft

    model = peft.get_peft_model(tiny_causal_lm(model_type), peft.LoraConfig(r=4, target_modules="all-linear",
                                                                            lora_dropout=0.0))
    for name, parameter in model.named_parameters():  # LoRA starts at B = 0: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    generator = torch.Generator().manual_seed(3)
    prompt_length, sequences = 5, torch.randint(3, VOCAB, (3, 11), generator=generator)
    attention_mask = torch.ones_like(sequences)
    attention_mask[0, :2] = attention_mask[1, :1] = 0  # left-padded prompts
    attention_mask[1, 8:] = attention_mask[2, 10:] = 0  # responses that ended early
    weights = torch.randn(3, 6, generator=generator)
    results = []
    for head in (FullLogits(), ChunkedLogits(chunk_tokens=4)):
        model.zero_grad()
        hidden, logps, entropy = head.response_logps(model, sequences, attention_mask, prompt_length, 0.7)
        (weights * logps + weights.flip(0) * entropy + hidden.sum(-1)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), logps.detach(), entropy.detach(), grads))
    for got, expected in zip(results[1][:3], results[0][:3]):
        torch.testing.assert_close(got, expected, **TOLERANCE)
    assert any("lora" in name for name in results[0][3])
    assert_same_gradients(results[1][3], results[0][3])
