"""Which decoder-only architectures of the installed transformers train with lit-factory, checked one by one.

For every entry of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` a tiny random model (2 layers, hidden 64) is
built from config through our builder, then: LoRA ``all`` must wrap linear layers but neither the output head nor an
MoE router; 2 SFT steps must keep the loss finite; the saved adapter and the merged export must reload with the
same logits; ``Freeze`` must find the decoder layers; a value head must attach to the last hidden states.
Architectures that cannot be built offline from a config are listed with the reason.

    python benchmarks/model_matrix.py            # all architectures, writes docs/models.md (minutes)
    python benchmarks/model_matrix.py llama qwen2  # some, printed only
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPARROW = str(REPO / "lit_factory/assets/sparrow-tokenizer")
# The tiny shape, under every name configs use for it; only the names a config has are passed.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            head_dim=16, max_position_embeddings=256, moe_intermediate_size=32, shared_expert_intermediate_size=32,
            num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
            linear_value_head_dim=16, sliding_window=64, attention_chunk_size=64, n_group=1, topk_group=1)
# Configs whose nested parts (vision towers, byte encoders) keep their full size are skipped: on 2 cores they would
# take minutes and gigabytes each.
MAX_PARAMETERS = 20_000_000
EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")


def causal_lm_architectures() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str) -> dict[str, Any]:
    """Inline config (``ModelArgs.config``) for a tiny random ``model_type``."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    text = default.get_text_config()
    options = {name: value for name, value in TINY.items() if hasattr(text, name) and getattr(text, name) is not None}
    if text is not default:  # a multimodal config: the shape goes to its text part
        return {"model_type": model_type, "text_config": {"model_type": text.model_type, **options}}
    return {"model_type": model_type, **options}


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (nothing is allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(config)
    text = options.get("text_config", options)
    text.setdefault("vocab_size", 512)  # the builder sizes the vocabulary to the tokenizer (Sparrow: a few hundred)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    return sum(p.numel() for p in model.parameters())


def default_template(model_type: str) -> str:
    from lit_factory.data.templates import available_templates, get_template

    for name in available_templates():
        if model_type in get_template(name).model_types:
            return name
    return "auto (tokenizer markers, else default)"


def verify(model_type: str, workdir: Path) -> dict[str, Any]:
    """Run every check on one architecture; the first failure ends it with its reason."""
    import torch
    from transformers import AutoModelForCausalLM

    from lit_factory.model import Freeze, LoRA, ModelArgs, build_inference_model, build_model, build_tokenizer
    from lit_factory.model.adapters import decoder_layers
    from lit_factory.model.export import export_model
    from lit_factory.model.value_head import ValueHead, last_hidden_states
    from lit_factory.stages.lm_head import causal_lm_loss

    row: dict[str, Any] = {"architecture": model_type, "template": default_template(model_type), "verified": []}
    step = "config"
    try:
        config = tiny_config(model_type)
        args = ModelArgs(config=config, tokenizer=SPARROW, dtype="float32", attn_implementation="eager")
        tokenizer = build_tokenizer(args)
        step = "size"
        size = parameter_count(json.loads(json.dumps(config)))
        assert size <= MAX_PARAMETERS, f"the tiny shape does not reach all its parts ({size / 1e6:.0f}M parameters)"
        step = "build"
        torch.manual_seed(0)
        base = build_inference_model(args, tokenizer)
        base_dir = workdir / "base"
        base.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        ids = torch.randint(3, min(len(tokenizer), base.config.get_text_config().vocab_size), (2, 12))
        mask = torch.ones_like(ids)

        step = "freeze"
        name, layers = decoder_layers(base)
        assert len(layers) == 2, f"found {len(layers)} layers at {name}"
        frozen = Freeze(trainable_layers=1).apply(base)
        assert any(p.requires_grad for p in layers[-1].parameters())
        assert not any(p.requires_grad for p in layers[0].parameters())
        row["verified"].append("Freeze")
        del frozen

        step = "lora targets"
        path_args = ModelArgs(path=str(base_dir), dtype="float32", attn_implementation="eager")
        model = build_model(path_args, tokenizer, LoRA(r=4, alpha=8, target_modules="all"))
        lora_layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A")}
        wrapped = sorted({_target_label(n, m) for n, m in lora_layers.items()})
        assert wrapped, "LoRA wrapped nothing"
        head = model.get_base_model().get_output_embeddings()
        assert not hasattr(head, "lora_A"), "LoRA wrapped the output head"
        text = model.config.get_text_config()
        experts = {getattr(text, n) for n in EXPERT_COUNT_NAMES if isinstance(getattr(text, n, None), int)}
        experts.add(getattr(getattr(text, "ffn_config", None), "moe_num_experts", None))
        # A router: a module whose class says it routes (TopKRouter, Router, TopKGating; not a GatingMLP), or a
        # linear layer named like a gate with one output per expert; a LoRA layer on one or inside one is a failure.
        routing = [n for n, m in model.named_modules()
                   if not hasattr(m, "lora_A") and re.search(r"Router|TopK|Gating$", type(m).__name__)]
        routers = [n for n, m in lora_layers.items() if (
                   getattr(_unwrapped(m), "out_features", None) in experts - {None, 1}
                   and re.search(r"router|gate", n.rsplit(".", 1)[-1])
                   or re.search(r"Router|TopK|Gating$", type(_unwrapped(m)).__name__)
                   or any(n.startswith(r + ".") for r in routing))]
        assert not routers, f"LoRA wrapped MoE routers {routers}"
        row["lora_targets"] = wrapped
        row["verified"].append("LoRA all")

        step = "sft steps"
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        model.train()
        for _ in range(2):
            loss = causal_lm_loss(model(input_ids=ids, attention_mask=mask).logits, ids)
            assert torch.isfinite(loss), f"loss {loss}"
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        row["verified"].append("SFT")

        step = "adapter reload"
        model.eval()
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
        adapter_dir = workdir / "adapter"
        model.save_pretrained(adapter_dir)
        reloaded = build_inference_model(ModelArgs(path=str(base_dir), adapter=str(adapter_dir), dtype="float32",
                                                   attn_implementation="eager"), tokenizer)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits, expected)
        row["verified"].append("adapter reload")

        step = "merged export"
        merged_dir = export_model(str(base_dir), str(workdir / "merged"), str(adapter_dir), dtype="float32")
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            torch.testing.assert_close(merged.eval()(input_ids=ids, attention_mask=mask).logits, expected,
                                       atol=1e-4, rtol=1e-4)
        row["verified"].append("merged export")

        step = "value head"
        hidden = last_hidden_states(model, ids, mask)
        values = ValueHead(hidden.size(-1))(hidden)
        assert values.shape == ids.shape and torch.isfinite(values).all()
        row["verified"].append("value head")
        row["status"] = "verified"
    except Exception as err:  # noqa: BLE001 - every failure is a row of the table, with its reason
        message = " ".join(str(err).split()) or type(err).__name__
        row["status"] = f"{step}: {type(err).__name__}: {message[:160]}"
        if "-v" in sys.argv:
            traceback.print_exc()
    return row


def _unwrapped(layer: Any) -> Any:
    """The layer a (possibly nested) PEFT layer adapts."""
    while hasattr(layer, "base_layer"):
        layer = layer.base_layer
    return layer


def _target_label(name: str, layer: Any) -> str:
    """A LoRA layer's leaf name; for PEFT's parameter wrappers (fused experts) ``module.parameter``."""
    parameter = getattr(layer, "parameter_name", None)
    module = re.sub(r"(\.base_layer)+$", "", name).rsplit(".", 1)[-1]
    return f"{module}.{parameter}" if parameter else module


def verify_in_tempdir(model_type: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"lit-factory-{model_type}-") as directory:
        return verify(model_type, Path(directory))


def write_markdown(rows: list[dict[str, Any]], path: Path, seconds: float) -> None:
    import transformers

    verified = [r for r in rows if r["status"] == "verified"]
    lines = [
        "# Supported model architectures",
        "",
        f"Generated by `python benchmarks/model_matrix.py` with transformers {transformers.__version__}: every",
        "decoder-only architecture of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, built as a tiny random model (2 layers,",
        "hidden 64) from config. Verified: LoRA `target_modules: all` wraps linear layers but not the output head nor",
        "an MoE router; 2 SFT steps with finite loss; the adapter and the merged export reload with the same logits;",
        "`Freeze` finds the decoder layers; a value head (reward model, PPO) attaches.",
        "",
        f"**{len(verified)} of {len(rows)} architectures verified** ({seconds:.0f} s on a 2-core CPU).",
        "`tests/model/test_model_matrix.py` re-runs a fixed sample (all of them with `LIT_FACTORY_MODEL_MATRIX=all`).",
        "",
        "| architecture | default template | LoRA `all` targets | verified |",
        "|---|---|---|---|",
    ]
    for r in verified:
        lines.append(f"| {r['architecture']} | {r['template']} | {', '.join(r['lora_targets'])} | "
                     f"{', '.join(r['verified'])} |")
    lines += ["", "## Not verified, and why", "", "| architecture | where it stopped |", "|---|---|"]
    for r in rows:
        if r["status"] != "verified":
            reason = r["status"].replace("|", "/")
            done = f" (passed: {', '.join(r['verified'])})" if r["verified"] else ""
            lines.append(f"| {r['architecture']} | {reason}{done} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    staging.replace(path)


def main(argv: list[str]) -> int:
    import logging
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    names = [a for a in argv if not a.startswith("-")] or causal_lm_architectures()
    started, rows = time.perf_counter(), []
    for name in names:
        t = time.perf_counter()
        rows.append(verify_in_tempdir(name))
        print(f"{name:<28} {time.perf_counter() - t:5.1f}s  {rows[-1]['status']}", flush=True)
    seconds = time.perf_counter() - started
    print(f"{sum(r['status'] == 'verified' for r in rows)} of {len(rows)} verified in {seconds:.0f} s")
    if not [a for a in argv if not a.startswith("-")]:
        write_markdown(rows, REPO / "docs" / "models.md", seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
