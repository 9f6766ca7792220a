"""OFT through PEFT's OFTConfig: the same trainable parameters and forward as PEFT's own OFT, one training step
changes only the orthogonal blocks, the saved adapter reloads with plain PEFT to identical logits, and an adapter
run resumes it; block sizes that do not divide a layer are a one-line error."""

from functools import partial

import pytest
import torch

from lit_factory.errors import LitFactoryError
from lit_factory.model import OFT, ModelArgs, build_model, build_tokenizer
from lit_factory.stages import SFT
from test_adapters import base_dir, fit, logits_of, trainable  # noqa: F401 - base_dir is a fixture


def peft_oft(base_dir, seed: int, **config):
    from peft import OFTConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return get_peft_model(model, OFTConfig(task_type="CAUSAL_LM", target_modules="all-linear", **config))


def randomise(ours, reference) -> None:
    """The same non-zero OFT parameters in both (they start at the identity rotation)."""
    generator = torch.Generator().manual_seed(0)
    reference_params = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        if parameter.requires_grad:
            value = torch.randn(parameter.shape, generator=generator) * 0.1
            parameter.data.copy_(value)
            reference_params[name].data.copy_(value)


def test_oft_matches_peft_reference(base_dir):
    args = ModelArgs(path=str(base_dir))
    tokenizer = build_tokenizer(args)
    ours = build_model(args, tokenizer, OFT(block_size=16))
    reference = peft_oft(base_dir, 0, oft_block_size=16, r=0)
    assert sorted(trainable(ours)) == sorted(trainable(reference))
    assert all(".oft_R." in name for name in trainable(ours))
    at_init = logits_of(ours.eval(), tokenizer)
    with ours.disable_adapter():
        torch.testing.assert_close(at_init, logits_of(ours, tokenizer), rtol=0, atol=1e-5)  # identity at init
    randomise(ours, reference)
    rotated = logits_of(ours.eval(), tokenizer)
    torch.testing.assert_close(rotated, logits_of(reference.eval(), tokenizer), rtol=0, atol=1e-5)
    assert not torch.allclose(rotated, at_init, atol=1e-3)


def test_oft_trains_only_its_blocks_and_reloads_with_plain_peft(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stage = SFT(ModelArgs(path=str(base_dir)), OFT(block_size=16), partial(torch.optim.AdamW, lr=1e-2))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    fit(stage, tmp_path, 2)
    changed = {n for n, p in stage.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable(stage.model))
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path).eval()
    expected = logits_of(stage.model.eval(), stage.tokenizer)
    torch.testing.assert_close(logits_of(reloaded, stage.tokenizer), expected, rtol=0, atol=1e-5)
    # The run folder resumes as an adapter for further OFT training.
    args = ModelArgs(path=str(base_dir), adapter=str(tmp_path))
    resumed = build_model(args, build_tokenizer(args), OFT(block_size=16))
    torch.testing.assert_close(logits_of(resumed.eval(), stage.tokenizer), expected, rtol=0, atol=1e-5)
    assert trainable(resumed)


def test_oft_options_are_checked_in_one_line(base_dir):
    with pytest.raises(LitFactoryError, match="either block_size or r"):
        OFT(block_size=32, r=4)
    args = ModelArgs(path=str(base_dir))
    with pytest.raises(LitFactoryError, match="block_size: 48 does not divide"):
        build_model(args, build_tokenizer(args), OFT(block_size=48))
