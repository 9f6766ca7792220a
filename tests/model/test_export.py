"""`lit-factory export` (merge LoRA, sharded safetensors, dtype, atomic, errors) and `lit-factory expand`
(LLaMA Pro: identity-initialised blocks) through the CLI, checked with plain transformers/PEFT."""

import json
from pathlib import Path

import pytest
import torch

from lit_factory.cli import main
from tiny_models import SPARROW, TINY


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny saved base model and a LoRA adapter (non-zero B) saved with its tokenizer, as a run leaves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base, adapter = tmp_path_factory.mktemp("base"), tmp_path_factory.mktemp("adapter")
    tokenizer = AutoTokenizer.from_pretrained(SPARROW)
    options = dict(TINY, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is the capital of Peru? The capital of Peru is Lima.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_export_merges_the_adapter_into_sharded_safetensors(base_and_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = base_and_adapter
    output = tmp_path / "merged"
    assert main(["export", "--model", str(base), "--adapter", str(adapter), "--output", str(output),
                 "--max-shard-size", "200KB"]) == 0
    index = json.loads((output / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((output / s).is_file() for s in shards)
    assert not list(tmp_path.glob(".merged.*"))  # the staging folder is gone

    tokenizer = AutoTokenizer.from_pretrained(output)
    exported = AutoModelForCausalLM.from_pretrained(output).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    assert not any("lora" in n for n, _ in exported.named_parameters())
    torch.testing.assert_close(logits_of(exported, tokenizer), logits_of(reference, tokenizer), rtol=0, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    assert not torch.allclose(logits_of(plain, tokenizer), logits_of(exported, tokenizer), atol=1e-3)


def test_export_writes_the_chosen_dtype(base_and_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    base, adapter = base_and_adapter
    assert main(["export", "--model", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "bf16"),
                 "--dtype", "bfloat16"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_export_errors_are_one_line(base_and_adapter, tmp_path, capsys):
    base, adapter = base_and_adapter
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", "--model", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "taken")]) == 2
    assert main(["export", "--model", str(base), "--adapter", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-factory: error:")]
    assert len(errors) == 2 and "--output" in errors[0] and "--adapter" in errors[1]


def test_expand_inserts_identity_blocks(base_and_adapter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = base_and_adapter
    output = tmp_path / "pro"
    assert main(["expand", "--model", str(base), "--output", str(output), "--num-expand", "2"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(output)
    expanded = AutoModelForCausalLM.from_pretrained(output).eval()
    original = AutoModelForCausalLM.from_pretrained(base).eval()
    assert expanded.config.num_hidden_layers == 4
    # New blocks copy their predecessor with zeroed output projections: the expanded model computes the same.
    torch.testing.assert_close(logits_of(expanded, tokenizer), logits_of(original, tokenizer), rtol=0, atol=1e-5)
    torch.testing.assert_close(expanded.model.layers[1].self_attn.q_proj.weight, original.model.layers[0].self_attn.q_proj.weight)
    assert expanded.model.layers[1].mlp.down_proj.weight.abs().sum() == 0
    assert main(["expand", "--model", str(base), "--output", str(tmp_path / "bad"), "--num-expand", "3"]) == 2
