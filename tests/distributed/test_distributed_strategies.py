"""Strategies chosen in a recipe (recipes/distributed/*.yaml), checked in one process without a GPU: DeepSpeed's
settings as built from the recipe and from LLaMA-Factory's JSON files (their "auto" values filled as transformers
fills them), the decoder layer FSDP shards by, and the one-line errors for what cannot run here."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_factory.cli import main
from lit_factory.errors import LitFactoryError
from test_distributed import recipe
from tiny_models import save_tiny_base

LF_DEEPSPEED = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
MICRO_BATCH, ACCUMULATE, CLIP = 2, 4, 0.5


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base") / "tiny")


def built_from_recipe(tmp_path: Path, base: Path, monkeypatch, *overrides: str):
    """The trainer, stage and data module `lit-factory fit` builds from the test recipe plus ``overrides``, with the
    strategy connected as `Trainer.fit` connects it (the CUDA check is skipped: this test looks at settings only)."""
    from lightning.pytorch import LightningDataModule

    from lit_factory.lightning_cli import FactoryCLI
    from lit_factory.stages.base import Stage

    monkeypatch.setattr("lit_factory.distributed.checks.check_strategy", lambda trainer, stage: None)
    cli = FactoryCLI(Stage, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     auto_configure_optimizers=False, run=False, args=[
                         "--config", str(recipe(tmp_path, MICRO_BATCH, base)), *overrides,
                         "--trainer.accumulate_grad_batches", str(ACCUMULATE),
                         "--trainer.gradient_clip_val", str(CLIP)])
    cli.trainer._data_connector.attach_data(cli.model, datamodule=cli.datamodule)
    cli.trainer.strategy.connect(cli.model)
    cli.model.trainer = cli.trainer
    return cli.trainer


@pytest.mark.parametrize("overlay, stage, offload_optimizer, offload_parameters", [
    ("deepspeed_zero1", 1, False, False),
    ("deepspeed_zero2", 2, False, False),
    ("deepspeed_zero3", 3, False, False),
    ("zero3_offload", 3, True, True),
])
def test_deepspeed_recipes_build_their_zero_settings(tmp_path, base, monkeypatch, overlay, stage, offload_optimizer,
                                                     offload_parameters):
    from lit_factory.distributed import DeepSpeed

    trainer = built_from_recipe(tmp_path, base, monkeypatch, "--config", f"recipes/distributed/{overlay}.yaml")
    strategy = trainer.strategy
    assert type(strategy) is DeepSpeed
    strategy._init_config_if_needed()
    config = strategy.config
    zero = config["zero_optimization"]
    assert zero["stage"] == stage and strategy.zero_stage_3 == (stage == 3)
    assert ("offload_optimizer" in zero) == offload_optimizer and ("offload_param" in zero) == offload_parameters
    if offload_optimizer:
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert config["train_micro_batch_size_per_gpu"] == MICRO_BATCH
    assert config["gradient_accumulation_steps"] == ACCUMULATE
    assert config["gradient_clipping"] == CLIP


def transformers_reference(ds_config: dict, precision: str, hidden_size: int) -> dict:
    """transformers' own filling of a DeepSpeed config's "auto" values (what LLaMA-Factory's JSONs are written for)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = SimpleNamespace(
        world_size=1, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=ACCUMULATE,
        max_grad_norm=CLIP, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        weight_decay=0.0, save_on_each_node=False, fp16=precision == "16-mixed", fp16_full_eval=False,
        bf16=precision == "bf16-mixed", bf16_full_eval=False, get_warmup_steps=lambda steps: 0)
    reference = HfTrainerDeepSpeedConfig(json.loads(json.dumps(ds_config)))
    reference.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size))
    reference.trainer_config_finalize(args, model, num_training_steps=10)
    return reference.config


@pytest.mark.parametrize("name", sorted(p.name for p in LF_DEEPSPEED.glob("*.json")))
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_llamafactory_deepspeed_json_auto_values_filled_like_transformers(name, precision):
    from lit_factory.distributed.deepspeed import resolve_auto_values

    ds_config = json.loads((LF_DEEPSPEED / name).read_text())
    ours = resolve_auto_values(ds_config, micro_batch_size=MICRO_BATCH, accumulate_grad_batches=ACCUMULATE,
                               world_size=1, gradient_clip_val=CLIP, precision=precision, hidden_size=64)
    assert ours == transformers_reference(ds_config, precision, hidden_size=64)
    assert ours["bf16"]["enabled"] is (precision == "bf16-mixed")
    assert ours["fp16"]["enabled"] is (precision == "16-mixed")


def test_deepspeed_strategy_from_a_llamafactory_json_in_the_recipe(tmp_path, base, monkeypatch):
    trainer = built_from_recipe(tmp_path, base, monkeypatch, "--config", "recipes/distributed/deepspeed_json.yaml",
                                "--trainer.strategy.init_args.config", str(LF_DEEPSPEED / "ds_z3_offload_config.json"))
    strategy = trainer.strategy
    strategy._init_config_if_needed()
    config, zero = strategy.config, strategy.config["zero_optimization"]
    assert strategy.zero_stage_3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert config["train_micro_batch_size_per_gpu"] == MICRO_BATCH
    assert config["train_batch_size"] == MICRO_BATCH * ACCUMULATE  # one process
    assert config["gradient_accumulation_steps"] == ACCUMULATE  # set by Lightning once "auto" is gone
    assert config["gradient_clipping"] == CLIP
    assert config["fp16"]["enabled"] is False and config["bf16"]["enabled"] is False  # the recipe's 32-true
    assert zero["reduce_bucket_size"] == 64 * 64 and zero["stage3_param_persistence_threshold"] == 640


def test_deepspeed_json_that_disagrees_with_the_recipe_is_refused():
    from lit_factory.distributed.deepspeed import resolve_auto_values

    ds_config = json.loads((LF_DEEPSPEED / "ds_z2_config.json").read_text())
    ds_config["gradient_accumulation_steps"] = 8
    with pytest.raises(LitFactoryError, match=r"gradient_accumulation_steps is 8 but trainer.accumulate_grad_batches"):
        resolve_auto_values(ds_config, micro_batch_size=2, accumulate_grad_batches=4, world_size=1,
                            gradient_clip_val=None, precision="32-true", hidden_size=64)
    ds_config = {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}
    with pytest.raises(LitFactoryError, match=r"optimizer.params.lr stay 'auto'"):
        resolve_auto_values(ds_config, micro_batch_size=2, accumulate_grad_batches=4, world_size=1,
                            gradient_clip_val=None, precision="32-true", hidden_size=64)


def test_fsdp_shards_by_the_models_decoder_layer_also_under_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    from lit_factory.distributed.fsdp import decoder_layer_classes
    from tiny_models import TINY

    options = dict(TINY, vocab_size=128)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    assert decoder_layer_classes(model) == (Qwen2DecoderLayer,)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert decoder_layer_classes(peft_model) == (Qwen2DecoderLayer,)
    with pytest.raises(LitFactoryError, match="no module class named"):
        decoder_layer_classes(model, ["LlamaDecoderLayer"])


def fit_error(capsys, tmp_path: Path, base: Path, *overrides: str) -> str:
    code = main(["fit", "--config", str(recipe(tmp_path, MICRO_BATCH, base)), *overrides])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit-factory: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("overlay", ["deepspeed_zero1", "deepspeed_zero3", "zero3_offload"])
def test_deepspeed_on_a_cpu_machine_is_one_line_error(capsys, tmp_path, base, overlay):
    err = fit_error(capsys, tmp_path, base, "--config", f"recipes/distributed/{overlay}.yaml")
    assert "DeepSpeed runs only on CUDA GPUs" in err and "recipes/distributed/fsdp.yaml" in err


def test_nccl_on_a_cpu_machine_is_one_line_error(capsys, tmp_path, base):
    strategy = json.dumps({"class_path": "lightning.pytorch.strategies.DDPStrategy",
                           "init_args": {"process_group_backend": "nccl"}})
    err = fit_error(capsys, tmp_path, base, "--trainer.strategy", strategy)
    assert "nccl needs CUDA GPUs" in err and "gloo" in err


def test_quantized_model_under_a_sharding_strategy_is_one_line_error(capsys, tmp_path, base):
    err = fit_error(capsys, tmp_path, base, "--config", "recipes/distributed/fsdp.yaml",
                    "--model.init_args.finetuning", "lit_factory.model.LoRA",
                    "--model.init_args.model.quantization", "BitsAndBytes")
    assert "does not train under FSDP" in err and "DDP" in err


def test_missing_deepspeed_json_is_one_line_error(capsys, tmp_path, base):
    err = fit_error(capsys, tmp_path, base, "--config", "recipes/distributed/deepspeed_json.yaml",
                    "--trainer.strategy.init_args.config", str(tmp_path / "nowhere.json"))
    assert "nowhere.json" in err and "not a file" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed and FSDP on a GPU need CUDA")
@pytest.mark.parametrize("overlay", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "zero3_offload"])
def test_strategies_train_and_save_on_one_gpu(tmp_path, base, overlay):
    """World size 1 is still a real strategy run: it trains, and the saved model reloads with transformers."""
    from transformers import AutoModelForCausalLM

    code = main(["fit", "--config", str(recipe(tmp_path, MICRO_BATCH, base)), "--config",
                 f"recipes/distributed/{overlay}.yaml", "--trainer.accelerator", "cuda", "--trainer.devices", "1",
                 "--trainer.callbacks", "[]"])
    assert code == 0
    run_dir = tmp_path / "run" / "version_0"
    assert (run_dir / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(run_dir)
