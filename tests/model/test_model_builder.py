"""The shared model builder: dtype choice, fine-tuning methods against PEFT, special tokens, float32 trainables."""

import pytest
import torch

from lit_factory.errors import LitFactoryError
from lit_factory.model import Freeze, Full, LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.model.builder import resolve_dtype
from tiny_models import SPARROW

TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def tiny_args(**overrides) -> ModelArgs:
    return ModelArgs(config=dict(TINY), tokenizer=SPARROW, **overrides)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_dtype_follows_device_unless_named():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_inline_config_takes_vocab_and_special_ids_from_tokenizer():
    args = tiny_args()
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config._attn_implementation == "sdpa"


def test_lora_all_targets_every_linear_but_the_head_like_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    args = tiny_args()
    tokenizer = build_tokenizer(args)
    ours = build_model(args, tokenizer, LoRA(r=4, alpha=8))
    options = dict(TINY, vocab_size=len(tokenizer))
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, m in base.named_modules()
                           if isinstance(m, torch.nn.Linear) and "lm_head" not in name})
    reference = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=linear_names))
    assert sorted(trainable(ours)) == sorted(trainable(reference))
    assert sum(p.numel() for p in trainable(ours).values()) == sum(p.numel() for p in trainable(reference).values())
    assert not any("lm_head" in name for name in trainable(ours))


def test_lora_named_targets_and_unknown_target_error():
    args = tiny_args()
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, LoRA(target_modules=["q_proj", "v_proj"]))
    assert {n.split(".")[-4] for n in trainable(model)} == {"q_proj", "v_proj"}
    with pytest.raises(LitFactoryError, match="target_modules"):
        build_model(args, tokenizer, LoRA(target_modules=["query_key_value"]))


def test_freeze_trains_only_the_last_layers_and_extra_modules():
    args = tiny_args()
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, Freeze(trainable_layers=1, extra_modules=["norm"]))
    names = trainable(model)
    assert names and all(n.startswith("model.layers.2.") or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names
    assert any(n.startswith("model.layers.2.mlp") for n in names)
    with pytest.raises(LitFactoryError, match="trainable_layers"):
        build_model(args, tokenizer, Freeze(trainable_layers=9))


def test_full_trains_everything():
    args = tiny_args()
    model = build_model(args, build_tokenizer(args), Full())
    assert all(p.requires_grad for p in model.parameters())


def test_new_special_tokens_resize_near_the_mean_and_train_embeddings_under_lora(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    base_tokenizer = build_tokenizer(tiny_args())
    options = dict(TINY, vocab_size=len(base_tokenizer))
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    base.save_pretrained(tmp_path)
    base_tokenizer.save_pretrained(tmp_path)
    old = base.get_input_embeddings().weight.detach().clone()

    args = ModelArgs(path=str(tmp_path), new_special_tokens=["<tool>", "<obs>"])
    tokenizer = build_tokenizer(args)
    assert len(tokenizer) == len(base_tokenizer) + 2
    model = build_model(args, tokenizer, LoRA(r=2))
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(tokenizer)
    torch.testing.assert_close(embeddings[: old.shape[0]], old)
    new_rows = embeddings[old.shape[0]:]
    # New rows sit at the old mean, far closer to it than an old row typically is.
    assert (new_rows - old.mean(0)).norm(dim=-1).max() < 0.1 * (old - old.mean(0)).norm(dim=-1).mean()
    names = trainable(model)
    assert any("embed_tokens" in n for n in names) and any("lm_head" in n for n in names)


def test_trainable_parameters_stay_float32_under_bf16_weights():
    args = tiny_args(dtype="bfloat16")
    model = build_model(args, build_tokenizer(args), LoRA(r=2))
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert dtypes == {torch.float32} and frozen == {torch.bfloat16}


def test_model_args_errors_are_one_line():
    with pytest.raises(LitFactoryError, match="exactly one"):
        ModelArgs(tokenizer=SPARROW)
    with pytest.raises(LitFactoryError, match="model_type"):
        build_model(ModelArgs(config={"hidden_size": 8}, tokenizer=SPARROW), build_tokenizer(tiny_args()))
    with pytest.raises(LitFactoryError, match="flash-attn"):
        build_model(tiny_args(attn_implementation="flash_attention_2"), build_tokenizer(tiny_args()))
    with pytest.raises(LitFactoryError, match="model.tokenizer"):
        build_tokenizer(ModelArgs(config=dict(TINY), tokenizer="./no/such/dir"))
