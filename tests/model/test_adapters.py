"""The LoRA family and freeze variants against PEFT: trainable parameter counts, forward of rsLoRA/DoRA/PiSSA
equal to PEFT's reference modules, one step changes only what trains, save -> plain PEFT load round-trips,
stacking a new adapter on a merged one, freeze-by-module and LLaMA Pro layer choice."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import Freeze, LlamaPro, LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.stages import SFT
from tiny_models import DEMO, save_tiny_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def fit(stage, tmp_path, steps: int) -> None:
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)
    pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path, num_sanity_val_steps=0).fit(stage, datamodule=data)


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is the capital of Peru? The capital of Peru is Lima.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def peft_reference(base_dir, seed: int, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **config))


VARIANTS = {
    "rslora": (dict(r=4, alpha=8, use_rslora=True), dict(r=4, lora_alpha=8, use_rslora=True)),
    "dora": (dict(r=4, alpha=8, use_dora=True), dict(r=4, lora_alpha=8, use_dora=True)),
    "pissa": (dict(r=4, alpha=4, init="pissa"), dict(r=4, lora_alpha=4, init_lora_weights="pissa")),
    "additional_target": (dict(r=4, alpha=8, modules_to_save=["lm_head"]), dict(r=4, lora_alpha=8, modules_to_save=["lm_head"])),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_peft_reference_module(base_dir, variant):
    ours_options, peft_options = VARIANTS[variant]
    args = ModelArgs(path=str(base_dir))
    tokenizer = build_tokenizer(args)
    torch.manual_seed(3)
    ours = build_model(args, tokenizer, LoRA(**ours_options))
    reference = peft_reference(base_dir, 3, **peft_options)
    assert sorted(trainable(ours)) == sorted(trainable(reference))
    assert sum(p.numel() for p in trainable(ours).values()) == sum(p.numel() for p in trainable(reference).values())
    # Give B (zero at init) the same non-zero values in both, so the forward exercises the variant's scaling.
    generator = torch.Generator().manual_seed(0)
    reference_params = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        if "lora_B" in name:
            value = torch.randn(parameter.shape, generator=generator) * 0.1
            parameter.data.copy_(value)
            reference_params[name].data.copy_(value)
    torch.testing.assert_close(logits_of(ours.eval(), tokenizer), logits_of(reference.eval(), tokenizer),
                               rtol=0, atol=1e-5)
    if variant == "rslora":
        layer = ours.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # alpha / sqrt(r), the rsLoRA formula


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_step_changes_only_trainable_and_saved_adapter_reloads_on_the_original_base(base_dir, tmp_path, variant):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ours_options, _ = VARIANTS[variant]
    stage = SFT(ModelArgs(path=str(base_dir)), LoRA(**ours_options), partial(torch.optim.AdamW, lr=1e-2))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    fit(stage, tmp_path, 1)
    changed = {n for n, p in stage.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable(stage.model))
    assert any("lora_A" in n for n in changed)

    original = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    reloaded = PeftModel.from_pretrained(original, tmp_path).eval()
    # PiSSA trained on residual base weights; its saved adapter is converted to apply to the original base.
    torch.testing.assert_close(logits_of(reloaded, stage.tokenizer), logits_of(stage.model.eval(), stage.tokenizer),
                               rtol=0, atol=1e-4)


def test_pissa_moves_principal_components_out_of_the_base(base_dir):
    args = ModelArgs(path=str(base_dir))
    model = build_model(args, build_tokenizer(args), LoRA(r=4, alpha=4, init="pissa"))
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(base_dir).model.layers[0].mlp.down_proj.weight
    u, s, vh = torch.linalg.svd(original, full_matrices=False)
    principal = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    torch.testing.assert_close(layer.base_layer.weight, original - principal, rtol=0, atol=1e-4)
    torch.testing.assert_close(layer.lora_B["default"].weight @ layer.lora_A["default"].weight, principal,
                               rtol=0, atol=1e-4)


def test_bad_init_is_a_one_line_error():
    with pytest.raises(LitFactoryError, match="finetuning.init"):
        LoRA(init="svd")


def test_new_adapter_stacks_on_a_merged_one(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    first = SFT(ModelArgs(path=str(base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))
    fit(first, tmp_path / "first", 2)
    expected = logits_of(first.model.eval(), first.tokenizer)

    args = ModelArgs(path=str(base_dir), adapter=str(tmp_path / "first"), merge_adapter=True)
    stacked = build_model(args, build_tokenizer(args), LoRA(r=2, target_modules=["q_proj"]))
    # The old adapter is part of the base now: only the new rank-2 q_proj adapter trains, and at init (B = 0) the
    # model computes what base + old adapter computed.
    assert {n.split(".")[-4] for n in trainable(stacked)} == {"q_proj"}
    assert all(p.shape[0] == 2 or p.shape[1] == 2 for p in trainable(stacked).values())
    torch.testing.assert_close(logits_of(stacked.eval(), first.tokenizer), expected, rtol=0, atol=1e-5)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "first").merge_and_unload()
    torch.testing.assert_close(stacked.base_model.model.model.layers[0].mlp.up_proj.weight,
                               merged.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(LitFactoryError, match="merge_adapter"):
        ModelArgs(path=str(base_dir), merge_adapter=True)


def test_freeze_named_modules_within_the_last_layers(base_dir):
    args = ModelArgs(path=str(base_dir))
    model = build_model(args, build_tokenizer(args), Freeze(trainable_layers=1, trainable_modules=["mlp"]))
    names = trainable(model)
    assert names and all(n.startswith("model.layers.1.mlp.") for n in names)
    with pytest.raises(LitFactoryError, match="trainable_modules"):
        build_model(args, build_tokenizer(args), Freeze(trainable_layers=1, trainable_modules=["ffn"]))


def test_llama_pro_trains_exactly_the_expanded_blocks(base_dir, tmp_path):
    from lit_factory.model.expand import expand_model

    expanded = tmp_path / "expanded"
    expand_model(str(base_dir), str(expanded), num_expand=2)
    args = ModelArgs(path=str(expanded))
    model = build_model(args, build_tokenizer(args), LlamaPro(num_expanded_blocks=2))
    assert model.config.num_hidden_layers == 4
    assert {n.split(".")[2] for n in trainable(model)} == {"1", "3"}  # a new block after every original one
