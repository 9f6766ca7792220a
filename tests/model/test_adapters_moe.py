"""LoRA `target_modules: all` on MoE models: routers stay untouched (also where PEFT's v4 -> v5 conversion would
add them back), fused expert weights get adapters through PEFT's target_parameters, dense MLP layers of mixed
models keep theirs; the trained adapter reloads with plain PEFT to identical logits."""

import sys
from pathlib import Path

import pytest
import torch

from lit_factory.model import LoRA, ModelArgs, build_inference_model, build_model, build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from model_matrix import SPARROW, tiny_config  # noqa: E402 - the matrix's tiny shapes


def tiny_moe(model_type: str, directory: Path) -> ModelArgs:
    args = ModelArgs(config=tiny_config(model_type), tokenizer=SPARROW, dtype="float32", attn_implementation="eager")
    tokenizer = build_tokenizer(args)
    torch.manual_seed(0)
    build_inference_model(args, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelArgs(path=str(directory), dtype="float32", attn_implementation="eager")


def adapted(model) -> set[str]:
    """What carries a LoRA adapter: module names, and ``module.parameter`` for PEFT's parameter wrappers."""
    names = set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            name = name.replace("base_model.model.", "", 1)
            while name.endswith(".base_layer"):
                name = name[: -len(".base_layer")]
            names.add(f"{name}.{module.parameter_name}" if getattr(module, "parameter_name", None) else name)
    return names


@pytest.mark.parametrize("model_type, router, experts, dense", [
    # PEFT's conversion would wrap the TopKRouter `gate` (as gate.weight) of this family.
    ("qwen3_moe", "model.layers.1.mlp.gate", ["model.layers.1.mlp.experts.gate_up_proj",
                                              "model.layers.1.mlp.experts.down_proj"], []),
    # The router is an nn.Linear subclass; the shared expert is dense.
    ("llama4_text", "model.layers.1.feed_forward.router", ["model.layers.1.feed_forward.experts.gate_up_proj"],
     ["model.layers.1.feed_forward.shared_expert.down_proj"]),
    # A dense first layer whose gate/up/down_proj PEFT's conversion would move onto the fused experts.
    ("afmoe", "model.layers.1.mlp.router.gate", ["model.layers.1.mlp.experts.down_proj"],
     ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.down_proj.weight"]),
])
def test_lora_all_skips_routers_and_adapts_experts(tmp_path, model_type, router, experts, dense):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    args = tiny_moe(model_type, tmp_path / "base")
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, LoRA(r=4, alpha=8))
    wrapped = adapted(model)
    assert not any(name == router or name.startswith(router + ".") for name in wrapped), sorted(wrapped)
    assert set(experts) <= wrapped and set(dense) <= wrapped, sorted(wrapped)
    assert "model.layers.1.self_attn.q_proj" in wrapped and "lm_head" not in wrapped

    ids = torch.randint(3, len(tokenizer), (2, 12))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    from lit_factory.stages.lm_head import causal_lm_loss

    causal_lm_loss(model(input_ids=ids).logits, ids).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("experts" in n and "lora_B" in n for n in changed)  # the expert adapters train
    assert all("lora_" in n for n in changed)

    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(args.path, dtype=torch.float32, attn_implementation="eager"),
        tmp_path / "adapter").eval()
    assert adapted(reloaded) == wrapped
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_dropout_leaves_fused_experts_out_with_a_warning(tmp_path):
    args = tiny_moe("qwen3_moe", tmp_path / "base")
    with pytest.warns(UserWarning, match="cannot adapt fused MoE expert weights"):
        model = build_model(args, build_tokenizer(args), LoRA(r=4, dropout=0.1))
    wrapped = adapted(model)
    assert wrapped and not any("experts" in name or name.endswith(".gate") for name in wrapped)
