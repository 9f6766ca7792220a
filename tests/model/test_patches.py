"""Model patches: RoPE scaling against its formulas, NEFTune's noise bound and eval no-op, S²-Attn against the
LongLoRA algorithm (and full attention in eval), MoE blocks as ZeRO-3 leaves, VLMs with a frozen vision tower."""

import math

import pytest
import torch

from lit_factory.errors import LitFactoryError
from lit_factory.model import Full, LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.model.patches import NEFTune, Patch, RopeScaling, ShiftedSparseAttention
from tiny_models import SPARROW

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def tiny(**overrides) -> ModelArgs:
    return ModelArgs(config=dict(TINY), tokenizer=SPARROW, **overrides)


def rotary_cos(model, positions: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(1, positions.shape[-1], 64)
    cos, _ = model.model.rotary_emb(x, positions)
    return cos


@pytest.mark.parametrize("context_length, factor", [(100, 2.0), (200, 4.0)])
def test_linear_rope_scaling_interpolates_positions_by_the_ceil_factor(context_length, factor):
    args = tiny(patches=[RopeScaling("linear", context_length)])
    scaled = build_model(args, build_tokenizer(args))
    plain = build_model(tiny(), build_tokenizer(args))
    assert scaled.config.rope_parameters["factor"] == factor == math.ceil(context_length / 64)
    positions = torch.arange(context_length)[None].float()
    # Position interpolation: position p of the scaled model is position p / factor of the original.
    torch.testing.assert_close(rotary_cos(scaled, positions), rotary_cos(plain, positions / factor))


def test_dynamic_rope_scaling_keeps_short_inputs_and_changes_long_ones():
    args = tiny(patches=[RopeScaling("dynamic", 128)])
    scaled = build_model(args, build_tokenizer(args))
    plain = build_model(tiny(), build_tokenizer(args))
    assert scaled.config.rope_parameters["rope_type"] == "dynamic"
    short = torch.arange(32)[None]
    torch.testing.assert_close(rotary_cos(scaled, short), rotary_cos(plain, short))
    long = torch.arange(128)[None]
    assert not torch.allclose(rotary_cos(scaled, long), rotary_cos(plain, long))


def test_rope_scaling_needs_longer_context_to_act_and_a_context_length():
    args = tiny(patches=[RopeScaling("linear", 32)])
    assert build_model(args, build_tokenizer(args)).config.rope_parameters["rope_type"] == "default"
    with pytest.raises(TypeError, match="context_length"):
        RopeScaling("linear")


def test_neftune_noise_is_bounded_by_alpha_over_sqrt_length_times_hidden_and_off_in_eval():
    args = tiny(patches=[NEFTune(alpha=5.0)])
    model = build_model(args, build_tokenizer(args))
    embeddings = model.get_input_embeddings()
    ids = torch.randint(0, 100, (2, 16))
    clean = torch.nn.functional.embedding(ids, embeddings.weight)
    model.train()
    noise = embeddings(ids) - clean
    bound = 5.0 / math.sqrt(16 * 64)
    assert noise.abs().max() <= bound + 1e-6 and noise.abs().max() > 0.5 * bound
    model.eval()
    torch.testing.assert_close(embeddings(ids), clean)


def longlora_reference(query, key, value, group_ratio=0.25):
    """LongLoRA Algorithm 1, written directly: shift half of the heads by -G/2, causal attention in groups of G,
    shift back. Inputs [B, H, T, D] with T divisible by the group count and an even group size."""
    batch, heads, length, dim = query.shape
    size = int(length * group_ratio)

    def shift(t, steps):
        return torch.cat([t[:, : heads // 2], t[:, heads // 2:].roll(steps, dims=2)], dim=1)

    q, k, v = (shift(t, -size // 2) for t in (query, key, value))
    out = torch.empty_like(q)
    for start in range(0, length, size):
        window = slice(start, start + size)
        out[:, :, window] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, window], k[:, :, window], v[:, :, window], is_causal=True)
    return shift(out, size // 2).transpose(1, 2)


def test_shifted_sparse_attention_follows_the_longlora_algorithm():
    from lit_factory.model.patches import shifted_sparse_attention

    module = torch.nn.Module().train()
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 4, 32, 8) for _ in range(3))
    ours, _ = shifted_sparse_attention(module, query, key, value, None, scaling=8 ** -0.5)
    torch.testing.assert_close(ours, longlora_reference(query, key, value), rtol=1e-5, atol=1e-5)
    # Grouped-query attention: 2 key/value heads shared by 4 query heads, as repeat_kv expands them.
    ours, _ = shifted_sparse_attention(module, query, key[:, :2], value[:, :2], None, scaling=8 ** -0.5)
    expanded = key[:, :2].repeat_interleave(2, dim=1), value[:, :2].repeat_interleave(2, dim=1)
    torch.testing.assert_close(ours, longlora_reference(query, *expanded), rtol=1e-5, atol=1e-5)


def test_shift_attn_model_uses_full_attention_in_eval_and_grouped_attention_in_training():
    args = tiny(patches=[ShiftedSparseAttention()])
    tokenizer = build_tokenizer(args)
    torch.manual_seed(0)
    shifted = build_model(args, tokenizer)
    plain = build_model(tiny(), tokenizer)
    plain.load_state_dict(shifted.state_dict())
    ids = torch.randint(0, 100, (2, 32))
    mask = torch.ones_like(ids)
    mask[1, 28:] = 0  # right padding, as the collator makes it
    with torch.no_grad():
        torch.testing.assert_close(shifted.eval()(ids, attention_mask=mask).logits,
                                   plain.eval()(ids, attention_mask=mask).logits)
        trained = shifted.train()(ids, attention_mask=mask).logits
        full = plain.train()(ids, attention_mask=mask).logits
    # The first group (8 tokens) sees the same context either way for the unshifted heads only, so outputs
    # differ overall but stay finite; the last tokens attend only within their window.
    assert torch.isfinite(trained).all() and not torch.allclose(trained[0, 16:], full[0, 16:], atol=1e-4)
    with pytest.raises(LitFactoryError, match="shift_attn, S²-Attn\) runs on SDPA"):
        tiny(patches=[ShiftedSparseAttention()], attn_implementation="eager")


def test_moe_blocks_become_zero3_leaf_modules():
    from deepspeed.utils import z3_leaf_module

    args = ModelArgs(config=dict(model_type="mixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                 num_experts_per_tok=2), tokenizer=SPARROW)
    model = build_model(args, build_tokenizer(args))
    blocks = [m for m in model.modules() if type(m).__name__ == "MixtralSparseMoeBlock"]
    assert len(blocks) == 2 and all(z3_leaf_module(block) for block in blocks)
    dense = build_model(tiny(), build_tokenizer(args))
    assert not any(z3_leaf_module(m) for m in dense.modules())


def tiny_vlm() -> ModelArgs:
    return ModelArgs(config=dict(
        model_type="qwen2_vl",
        text_config=dict(model_type="qwen2_vl_text", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, in_chans=3, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
    ), tokenizer=SPARROW)


def test_vision_language_model_loads_with_image_text_class_and_frozen_vision_tower():
    args = tiny_vlm()
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, Full())
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    vision = [n for n, _ in model.named_parameters() if ".visual." in f".{n}"]
    assert vision and not any(p.requires_grad for n, p in model.named_parameters() if n in vision)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in vision)

    lora = build_model(args, tokenizer, LoRA(r=2))
    targeted = {n for n, _ in lora.named_modules() if n.endswith("lora_A")}
    assert targeted and not any(".visual." in n for n in targeted)

    from lit_factory.model import Freeze

    frozen = build_model(args, tokenizer, Freeze(trainable_layers=1))
    assert {n.split("layers.")[1].split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"1"}

    unfrozen = build_model(ModelArgs(**{**vars(args), "freeze_vision_tower": False,
                                        "freeze_multi_modal_projector": False}), tokenizer, Full())
    assert all(p.requires_grad for p in unfrozen.parameters())


# ---- a user's own patch, named in a recipe --------------------------------------------------------------------------
HOOK_CALLS: list[tuple] = []


class RecordingPatch(Patch):
    """A patch a user writes: sets a config value before the weights load and records the models its hooks see."""

    def __init__(self, rms_norm_eps: float = 1e-6) -> None:
        self.rms_norm_eps = rms_norm_eps

    def configure(self, config, load_options):
        config.rms_norm_eps = self.rms_norm_eps
        HOOK_CALLS.append(("configure", load_options["attn_implementation"]))

    def patch_base(self, model, device):
        HOOK_CALLS.append(("patch_base", type(model).__name__, device.type))

    def patch_model(self, model):
        HOOK_CALLS.append(("patch_model", type(model).__name__, model.config.rms_norm_eps))


def test_a_user_defined_patch_named_in_a_recipe_is_applied(tmp_path):
    import json

    import yaml

    from lit_factory.cli import main

    class_path = f"{RecordingPatch.__module__}.{RecordingPatch.__qualname__}"
    overlay = tmp_path / "my_patch.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"init_args": {
        "model": {"config": {**TINY, "model_type": "qwen2"},
                  "patches": [{"class_path": class_path, "init_args": {"rms_norm_eps": 0.125}}]},
        "finetuning": {"class_path": "lit_factory.model.LoRA", "init_args": {"r": 2}}}}}))
    HOOK_CALLS.clear()
    assert main(["fit", "--config", "recipes/quickstart.yaml", "--config", str(overlay), "--trainer.max_steps", "1",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                 "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.max_samples", "8",
                 "--data.init_args.val_size", "0", "--trainer.limit_val_batches", "0"]) == 0
    # Each hook ran once, in the builder's order: before loading, on the base, on the model LoRA wrapped.
    assert HOOK_CALLS == [("configure", "sdpa"), ("patch_base", "Qwen2ForCausalLM", "cpu"),
                          ("patch_model", "PeftModelForCausalLM", 0.125)]
    run = tmp_path / "quickstart" / "version_0"
    assert class_path in (run / "config.yaml").read_text() and class_path in (run / "hparams.yaml").read_text()
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 2
