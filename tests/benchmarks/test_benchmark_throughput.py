"""benchmarks/throughput.py's MFU accounting: the weight counts of its formula against the models transformers and
PEFT build (on the meta device, so the 7B shape costs nothing)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import throughput  # noqa: E402 - a script beside the benchmarks, imported as a module


@pytest.mark.parametrize("shape", sorted(throughput.SHAPES))
def test_flops_formula_counts_the_weights_transformers_and_peft_build(shape):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(throughput.SHAPES[shape])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    lora_weights = sum(p.numel() for p in model.parameters() if p.requires_grad)

    flops, frozen, lora = throughput.lora_flops_per_token(throughput.SHAPES[shape], rank=16, seq=2048)
    assert (frozen, lora) == (matmul_weights, lora_weights)
    config = throughput.SHAPES[shape]
    attention = 12 * config["num_hidden_layers"] * config["hidden_size"] * 2048  # 12·L·H·Q·T with H·Q = hidden
    assert flops == 4 * frozen + 6 * lora + attention
    if shape == "llama2-7b":  # issue 13's plain-loop reference, 6,192 tokens/s on an H100, is about a quarter of 740
        assert throughput.reference("plain").startswith("6,192 tokens/s, MFU 25.0%")
