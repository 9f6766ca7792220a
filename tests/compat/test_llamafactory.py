"""LLaMA-Factory YAMLs, unchanged: every example file is translated or its unsupported keys are named; the keys
translate to what LLaMA-Factory (and transformers' TrainingArguments) mean by them; a few examples train 2 steps."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from lit_factory.cli import main
from lit_factory.compat.commands import llamafactory_args
from lit_factory.compat.llamafactory import UNSUPPORTED, read_llamafactory_file, translate
from lit_factory.errors import LitFactoryError
from tiny_models import save_tiny_base

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory"
EXAMPLES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.yaml"))
LF_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "peer-data" / "llamafactory"
# The examples that need a feature lit-factory lacks, and the key the error must name.
UNSUPPORTED_EXAMPLES = {
    "extras/asft/llama2_full_asft.yaml": "use_asft_loss", "extras/asft/qwen2_full_asft.yaml": "use_asft_loss",
    "extras/eaft/qwen25_05b_eaft_full.yaml": "use_eaft_loss",
    "extras/fp8/llama3_fp8_deepspeed_sft.yaml": "fp8", "extras/fp8/llama3_fp8_fsdp_sft.yaml": "fsdp",
    "extras/mod/llama3_full_sft.yaml": "mixture_of_depths", "extras/nlg_eval/llama3_lora_predict.yaml": "do_predict",
    "merge_lora/qwen3_gptq.yaml": "export_quantization_bit", "train_lora/qwen3_lora_sft_ray.yaml": "ray_num_workers",
    "train_lora/qwen3_preprocess.yaml": "tokenized_path",
}


def lf(**keys):
    """A minimal LLaMA-Factory training config with ``keys`` on top."""
    return {"model_name_or_path": "some/model", "stage": "sft", "dataset": "identity", **keys}


def recipe(**keys):
    return translate(lf(**keys)).recipe


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_translates_with_every_key_accounted_for(name):
    config = read_llamafactory_file(FIXTURES / name)
    assert config is not None, "every copied example is recognised as LLaMA-Factory format"
    if name in UNSUPPORTED_EXAMPLES:
        with pytest.raises(LitFactoryError, match=rf"`{UNSUPPORTED_EXAMPLES[name]}: .*not supported yet"):
            translate(config, name)
        return
    translation = translate(config, name)
    mapped = {key for key, _ in translation.mapped}
    warned = {key for warning in translation.warnings for key in re.findall(r"^`(\w+)", warning)}
    off_by_default = {key for key, value in config.items() if key in UNSUPPORTED and value == UNSUPPORTED[key]}
    explicit_null = {key for key, value in config.items() if value is None}
    assert set(config) - mapped - warned - off_by_default - explicit_null == set(), "a key was dropped silently"


def test_examples_cover_the_folders_the_issue_names():
    folders = {name.split("/")[0] for name in EXAMPLES}
    assert folders == {"train_lora", "train_full", "train_qlora", "extras", "merge_lora", "inference"}
    assert len(EXAMPLES) - len(UNSUPPORTED_EXAMPLES) >= 25


def test_unknown_and_unsupported_keys_are_named_never_dropped():
    with pytest.raises(LitFactoryError, match=r"`lora_magic: 3` is not supported yet"):
        translate(lf(lora_magic=3))
    with pytest.raises(LitFactoryError, match=r"`use_asft_loss: True`, `fp8: True` are not supported yet"):
        translate(lf(use_asft_loss=True, fp8=True))
    # A switched-off feature's options are ignored by LLaMA-Factory; we say so.
    warnings = translate(lf(finetuning_type="full", lora_rank=16, galore_rank=4)).warnings
    assert any(w.startswith("`lora_rank` has no effect without `finetuning_type: lora`") for w in warnings)
    assert any(w.startswith("`galore_rank` has no effect without `use_galore: true`") for w in warnings)


def test_model_patch_keys_map_to_builder_options():
    patches = "lit_factory.model.patches"
    model = recipe(enable_liger_kernel=True, shift_attn=True, neftune_noise_alpha=5)["model"]["init_args"]["model"]
    assert model["patches"] == [{"class_path": f"{patches}.ShiftedSparseAttention"},
                                {"class_path": f"{patches}.LigerKernels"},
                                {"class_path": f"{patches}.NEFTune", "init_args": {"alpha": 5.0}}]
    assert "patches" not in recipe(enable_liger_kernel=False)["model"]["init_args"]["model"]
    # RoPE scaling stretches to the training length: the data's cutoff_len.
    model = recipe(rope_scaling="dynamic", cutoff_len=4096)["model"]["init_args"]["model"]
    assert model["patches"] == [{"class_path": f"{patches}.RopeScaling",
                                 "init_args": {"kind": "dynamic", "context_length": 4096}}]


@pytest.mark.parametrize("keys, expected", [
    (dict(quantization_bit=4), {"bits": 4, "quant_type": "nf4", "double_quantization": True}),
    (dict(quantization_bit=4, quantization_type="fp4", double_quantization=False),
     {"bits": 4, "quant_type": "fp4", "double_quantization": False}),
    (dict(quantization_bit=8), {"bits": 8, "double_quantization": True}),
])
def test_quantization_keys_map_to_bitsandbytes(keys, expected):
    model = recipe(**keys)["model"]["init_args"]["model"]
    assert model["quantization"] == {"class_path": "lit_factory.model.quantization.BitsAndBytes", "init_args": expected}


def test_plot_loss_adds_the_loss_plot_callback_and_tensorboard_logs_no_hp_metric():
    callbacks = recipe(plot_loss=True)["trainer"]["callbacks"]
    assert callbacks[0] == {"class_path": "lit_factory.callbacks.LossPlot"}
    assert callbacks[-1]["class_path"].endswith("ModelCheckpoint")  # overrides keep reaching the last callback
    assert all(not c["class_path"].endswith("LossPlot") for c in recipe()["trainer"]["callbacks"])
    logger = recipe(report_to="tensorboard")["trainer"]["logger"]["init_args"]
    assert logger["default_hp_metric"] is False


def test_lora_keys_and_llamafactory_defaults():
    lora = recipe(lora_target="all")["model"]["init_args"]["finetuning"]
    assert lora == {"class_path": "lit_factory.model.LoRA",
                    "init_args": {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all"}}
    lora = recipe(lora_target="q_proj, v_proj", lora_rank=4, use_dora=True, pissa_init=True, pissa_iter=-1,
                  additional_target="embed_tokens")["model"]["init_args"]["finetuning"]["init_args"]
    assert lora == {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                    "modules_to_save": ["embed_tokens"], "use_dora": True, "init": "pissa"}
    freeze = recipe(finetuning_type="freeze", freeze_trainable_layers=3, freeze_trainable_modules="mlp")
    assert freeze["model"]["init_args"]["finetuning"] == {
        "class_path": "lit_factory.model.Freeze", "init_args": {"trainable_layers": 3, "trainable_modules": ["mlp"]}}
    pro = recipe(finetuning_type="freeze", freeze_trainable_layers=8, use_llama_pro=True)
    assert pro["model"]["init_args"]["finetuning"]["init_args"] == {"num_expanded_blocks": 8}


def test_epochs_steps_and_schedule_translate_to_transformers_meaning():
    trainer = recipe(num_train_epochs=0.5)["trainer"]
    assert (trainer["max_epochs"], trainer["limit_train_batches"]) == (1, 0.5)
    assert recipe(num_train_epochs=2.0)["trainer"]["max_epochs"] == 2
    assert "max_epochs" not in recipe(num_train_epochs=2.0, max_steps=7)["trainer"]  # max_steps wins
    assert recipe()["trainer"]["max_epochs"] == 3  # transformers' default
    with pytest.raises(LitFactoryError, match="num_train_epochs: 2.5"):
        recipe(num_train_epochs=2.5)
    stage = recipe(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
                   warmup_ratio=0.1)["model"]["init_args"]
    assert (stage["lr_schedule"], stage["min_lr_ratio"], stage["warmup_steps"]) == ("cosine", 0.1, 0.1)
    stage = recipe(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-5},
                   learning_rate=1e-4)["model"]["init_args"]
    assert stage["min_lr_ratio"] == pytest.approx(0.1)
    assert recipe(warmup_steps=5, warmup_ratio=0.3)["model"]["init_args"]["warmup_steps"] == 5  # steps win
    assert recipe()["model"]["init_args"]["lr_schedule"] == "linear"  # transformers' default
    constant = translate(lf(lr_scheduler_type="constant", warmup_ratio=0.1))  # transformers ignores the warmup
    assert constant.recipe["model"]["init_args"]["warmup_steps"] == 0 and constant.warnings
    with pytest.raises(LitFactoryError, match="lr_scheduler_type: polynomial"):
        recipe(lr_scheduler_type="polynomial")


def test_batch_precision_eval_and_strategy(tmp_path):
    trainer = recipe(gradient_accumulation_steps=8, bf16=True, eval_strategy="steps", eval_steps=5)["trainer"]
    assert (trainer["accumulate_grad_batches"], trainer["precision"]) == (8, "bf16-mixed")
    assert trainer["val_check_interval"] == 40  # optimizer steps -> batches
    assert recipe(pure_bf16=True)["trainer"]["precision"] == "bf16-true"
    assert recipe(fp16=True)["trainer"]["precision"] == "16-mixed"
    assert recipe()["trainer"]["precision"] == "32-true"
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {
        "stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    strategy = recipe(deepspeed=str(config))["trainer"]["strategy"]
    assert strategy == {"class_path": "lit_factory.distributed.DeepSpeed", "init_args": {"config": str(config)}}
    from lit_factory.distributed import DeepSpeed

    zero = DeepSpeed(**strategy["init_args"]).config["zero_optimization"]  # the file decides stage and offload
    assert (zero["stage"], zero["offload_optimizer"]["device"]) == (2, "cpu")
    by_name = recipe(deepspeed="examples/deepspeed/ds_z3_offload_config.json")["trainer"]["strategy"]["init_args"]
    assert by_name == {"stage": 3, "offload_optimizer": True, "offload_parameters": True}
    data = recipe(per_device_train_batch_size=2, cutoff_len=64, val_size=0.1, neat_packing=True)["data"]["init_args"]
    assert (data["batch_size"], data["cutoff_len"], data["val_size"], data["packing"]) == (2, 64, 0.1, True)
    assert data["dataset"] == ["identity"] and data["dataset_dir"] == "data"


def test_stages_and_preference_options():
    def stage(**keys):
        section = recipe(**keys)["model"]
        return section["class_path"].rsplit(".", 1)[1], section["init_args"]

    assert stage(stage="pt")[0] == "PreTrain" and stage(stage="rm")[0] == "RewardModel"
    name, args = stage(stage="dpo", pref_beta=0.2, pref_ftx=0.5)
    assert (name, args["beta"], args["loss_type"], args["sft_weight"]) == ("DPO", 0.2, "sigmoid", 0.5)
    assert stage(stage="dpo", pref_loss="orpo")[0] == "ORPO"
    name, args = stage(stage="dpo", pref_loss="simpo", simpo_gamma=1.0)
    assert (name, args["gamma"], args["beta"]) == ("SimPO", 1.0, 0.1)  # LLaMA-Factory's pref_beta default
    name, args = stage(stage="kto", kto_chosen_weight=2.0)
    assert (name, args["desirable_weight"], args["undesirable_weight"]) == ("KTO", 2.0, 1.0)
    name, args = stage(stage="ppo", reward_model="saves/rm", ppo_target=3.0, per_device_train_batch_size=2)
    assert (name, args["target_kl"], args["mini_batch_size"], args["reward_model"]) == ("PPO", 3.0, 2, "saves/rm")


def test_optimizer_methods():
    galore = recipe(finetuning_type="full", use_galore=True, galore_rank=4, galore_target="mlp")
    assert galore["model"]["init_args"]["optimizer"]["class_path"] == "lit_factory.optim.GaLore"
    assert galore["model"]["init_args"]["optimizer"]["init_args"]["target_modules"] == ["mlp"]
    badam = recipe(finetuning_type="full", use_badam=True, badam_switch_interval=5, learning_rate=1e-3)
    assert badam["model"]["init_args"]["optimizer"]["init_args"]["switch_every"] == 5
    assert badam["model"]["init_args"]["optimizer"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-3
    plus = recipe(loraplus_lr_ratio=16.0)["model"]["init_args"]["optimizer"]
    assert (plus["class_path"], plus["init_args"]["lr_ratio"]) == ("lit_factory.optim.LoRAPlus", 16.0)


def test_extras_method_keys_translate_to_their_components():
    def optimizer(**keys):
        section = recipe(finetuning_type="full", **keys)["model"]["init_args"]["optimizer"]
        return section["class_path"].rsplit(".", 1)[1], section["init_args"]

    name, args = optimizer(use_apollo=True, apollo_rank=128, apollo_scale=32.0, apollo_scale_type="tensor",
                           apollo_layerwise=True, apollo_target="q_proj,v_proj", learning_rate=1e-5)
    assert (name, args["rank"], args["scale_type"], args["layerwise"], args["lr"]) == ("APOLLO", 128, "tensor", True, 1e-5)
    assert (args["projection"], args["target_modules"]) == ("random", ["q_proj", "v_proj"])  # LF's apollo_proj default
    name, args = optimizer(use_galore=True, galore_layerwise=True, galore_rank=8)
    assert (name, args["layerwise"], args["rank"]) == ("GaLore", True, 8)
    with pytest.raises(LitFactoryError, match="galore_layerwise.*gradient_accumulation_steps: 1"):
        optimizer(use_galore=True, galore_layerwise=True, gradient_accumulation_steps=8)
    name, args = optimizer(use_adam_mini=True, learning_rate=2e-5, adam_beta2=0.95)
    assert (name, args["lr"], args["betas"]) == ("AdamMini", 2e-5, [0.9, 0.95])
    name, args = optimizer(use_muon=True, weight_decay=0.1)
    assert (name, args["weight_decay"], args["adamw_betas"]) == ("Muon", 0.1, [0.9, 0.999])
    name, args = optimizer(use_badam=True, badam_mode="ratio", badam_update_ratio=0.1, badam_mask_mode="scatter")
    assert (name, args["update_ratio"], args["mask_mode"]) == ("BAdamRatio", 0.1, "scatter")
    ratio = translate(lf(finetuning_type="full", use_badam=True, badam_mode="ratio", badam_switch_interval=5))
    assert any(w.startswith("`badam_switch_interval` has no effect with `badam_mode: ratio`") for w in ratio.warnings)
    assert ratio.recipe["trainer"]["gradient_clip_val"] is None  # torch cannot clip sparse gradients
    with pytest.raises(LitFactoryError, match="`use_muon: True` cannot be combined with `use_galore`"):
        optimizer(use_galore=True, use_muon=True)
    with pytest.raises(LitFactoryError, match="use_apollo: True.*needs finetuning_type: full"):
        recipe(use_apollo=True)
    oft = recipe(finetuning_type="oft", oft_block_size=16, oft_target="all", module_dropout=0.1,
                 additional_target="lm_head")["model"]["init_args"]["finetuning"]
    assert oft == {"class_path": "lit_factory.model.OFT", "init_args": {
        "block_size": 16, "r": 0, "target_modules": "all", "module_dropout": 0.1, "modules_to_save": ["lm_head"]}}
    assert recipe(use_dft_loss=True)["model"]["class_path"] == "lit_factory.stages.DFT"
    with pytest.raises(LitFactoryError, match="use_dft_loss: True.*needs stage: sft"):
        recipe(stage="dpo", use_dft_loss=True)


@pytest.mark.parametrize("example, stage, optimizer", [
    ("extras/apollo/llama3_full_sft.yaml", "SFT", "APOLLO"), ("extras/adam_mini/qwen2_full_sft.yaml", "SFT", "AdamMini"),
    ("extras/muon/qwen2_full_sft.yaml", "SFT", "Muon"), ("extras/galore/llama3_full_sft.yaml", "SFT", "GaLore"),
    ("extras/dft/qwen2_full_sft.yaml", "DFT", "AdamW"), ("extras/oft/llama3_oft_sft.yaml", "SFT", "AdamW"),
])
def test_extras_examples_translate_to_our_methods(example, stage, optimizer):
    model = translate(read_llamafactory_file(FIXTURES / example), example).recipe["model"]
    assert model["class_path"].rsplit(".", 1)[1] == stage
    assert model["init_args"]["optimizer"]["class_path"].rsplit(".", 1)[1] == optimizer


def test_verbs_map_to_our_subcommands():
    assert llamafactory_args(["version"]) == ["--version"]
    assert llamafactory_args(["webui"]) == ["board"]
    merge = str(FIXTURES / "merge_lora/qwen3_lora_sft.yaml")
    assert llamafactory_args(["export", merge]) == [
        "export", "--model", "Qwen/Qwen3-4B-Instruct-2507", "--adapter", "saves/qwen3-4b/lora/sft", "--trust-remote-code",
        "--output", "saves/qwen3_sft_merged", "--max-shard-size", "5GB"]
    inference = str(FIXTURES / "inference/qwen3_lora_sft.yaml")
    assert llamafactory_args(["chat", inference]) == [
        "chat", "--model", "Qwen/Qwen3-4B-Instruct-2507", "--adapter", "saves/qwen3-4b/lora/sft",
        "--template", "qwen3_nothink"]
    assert llamafactory_args(["api", inference])[-2:] == ["--backend", "transformers"]
    assert llamafactory_args(["chat", "--model", "x"]) == ["chat", "--model", "x"]  # ours pass through
    native = ["fit", "--config", "recipes/quickstart.yaml", "--ckpt_path", "runs/epoch=0-step=4.ckpt"]
    assert llamafactory_args(native) == native  # an option's value with '=' is no LLaMA-Factory override


def test_env_version_and_errors_through_the_cli(capsys):
    assert main(["env"]) == 0 and "- transformers: " in capsys.readouterr().out
    assert main(["version"]) == 0 and capsys.readouterr().out.strip()
    assert main(["train", str(FIXTURES / "extras/mod/llama3_full_sft.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "`mixture_of_depths: convert` is not supported yet" in err[0]


def test_convert_writes_a_commented_recipe_once(tmp_path, capsys):
    source = FIXTURES / "train_lora/qwen3_lora_sft.yaml"
    output = tmp_path / "recipe.yaml"
    assert main(["convert", str(source), "-o", str(output)]) == 0
    text = output.read_text()
    assert "#   lora_target                 -> model.init_args.finetuning.init_args.target_modules" in text
    converted = yaml.safe_load(text)
    assert converted == translate(read_llamafactory_file(source), str(source)).recipe
    assert main(["convert", str(source), "-o", str(output)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


def lf_overrides(base, output_dir):
    """LLaMA-Factory's key=value overrides that shrink an example to 2 steps on the tiny model and demo data."""
    return [f"model_name_or_path={base}", "template=chatml", f"dataset_dir={LF_DATA}", f"output_dir={output_dir}",
            "max_steps=2", "cutoff_len=96", "max_samples=8", "logging_steps=1", "preprocessing_num_workers=null",
            "dataloader_num_workers=0", "bf16=false", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"]


def logged_losses(output_dir: Path) -> list[float]:
    with open(output_dir / "metrics.csv") as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.parametrize("example, saved, extra", [
    ("train_lora/qwen3_lora_sft.yaml", "adapter_model.safetensors", []),
    ("train_full/qwen3_full_sft.yaml", "model.safetensors", ["deepspeed=null"]),  # DeepSpeed needs a GPU
    ("train_lora/qwen3_lora_dpo.yaml", "adapter_model.safetensors", []),
    ("train_lora/qwen3_lora_pretrain.yaml", "adapter_model.safetensors", []),
])
def test_examples_train_two_steps_unchanged(tiny_base, tmp_path, example, saved, extra):
    output_dir = tmp_path / "out"
    assert main(["train", str(FIXTURES / example), *lf_overrides(tiny_base, output_dir), *extra]) == 0
    assert (output_dir / saved).is_file()
    losses = logged_losses(output_dir)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_fit_and_print_config_read_llamafactory_files(tiny_base, tmp_path, capsys):
    example = str(FIXTURES / "train_lora/qwen3_lora_sft.yaml")
    assert main(["fit", "--config", example, *lf_overrides(tiny_base, tmp_path), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_factory.stages.SFT"
    assert printed["model"]["init_args"]["finetuning"]["init_args"]["target_modules"] == "all"
    assert printed["trainer"]["max_steps"] == 2 and printed["data"]["init_args"]["template"] == "chatml"
