"""LLaMA-Factory YAML -> lit-factory recipe.

A LLaMA-Factory file is one flat mapping of its ModelArguments, DataArguments, FinetuningArguments and transformers'
TrainingArguments. ``translate`` turns it into our recipe (stage, finetuning component, optimizer, data module,
trainer) and accounts for every key: it is mapped, or has no effect here (a warning says why), or names a feature
we lack (an error lists them all). Absent keys take LLaMA-Factory's (and transformers') defaults, written out in the
recipe so that a converted file trains as the original did.

Only ``yaml`` is imported here, so the CLI can translate before any heavy import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from lit_factory.compat.keys import Keys as _Keys, Translation
from lit_factory.compat.lf_methods import finetuning_method, names as _names, optimizer_method
from lit_factory.errors import LitFactoryError

STAGES = {"pt": "PreTrain", "sft": "SFT", "rm": "RewardModel", "ppo": "PPO", "dpo": "DPO", "kto": "KTO"}
# pref_loss picks our stage within LLaMA-Factory's `dpo` stage.
PREFERENCE_STAGES = {"sigmoid": "DPO", "hinge": "DPO", "ipo": "DPO", "orpo": "ORPO", "simpo": "SimPO"}
# transformers scheduler name -> (our lr_schedule, warmup honoured). `constant` ignores warmup in transformers.
SCHEDULES = {"linear": ("linear", True), "cosine": ("cosine", True), "cosine_with_min_lr": ("cosine", True),
             "constant_with_warmup": ("constant", True), "constant": ("constant", False)}
ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash_attention_2"}
# Where the model parts that LLaMA-Factory's flags map to live (``model.init_args.model.quantization``/``patches``).
BITSANDBYTES = "lit_factory.model.quantization.BitsAndBytes"
PATCHES = "lit_factory.model.patches"

# Keys that change nothing in lit-factory: key -> why (each still gets a one-line warning).
NO_EFFECT = {
    "do_train": "lit-factory fit always trains",
    "do_eval": "validation runs whenever val_size > 0",
    "overwrite_output_dir": "outputs in output_dir are replaced file by file",
    "overwrite_cache": "the tokenized-data cache is keyed by its inputs and rebuilt when they change",
    "ddp_timeout": "Lightning's default process-group timeout applies",
    "badam_verbose": "BAdam's switches are not printed",
    "use_reentrant_gc": "transformers' default checkpointing mode applies",
    "gradient_checkpointing_kwargs": "transformers' default checkpointing mode applies",
    "resize_vocab": "embeddings are resized whenever the tokenizer gains tokens",
    "export_legacy_format": "exports are always safetensors",
    "export_device": "exports merge on the CPU",
    "infer_dtype": "the model loads in model.dtype (auto)",
    "run_name": "the run is named by output_dir",
    "save_strategy": "checkpoints follow save_steps",
    "finetuning_type": "inference and export apply adapter_name_or_path when it is given",
    **{key: "video and audio input are not supported yet (image-text data is; rows with videos or audios stop "
            "with an error)" for key in ("video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen",
                                         "use_audio_in_video", "audio_sampling_rate")},
}
# LLaMA-Factory features we lack: key -> its default. Set to anything else they stop the translation.
UNSUPPORTED = {
    "use_asft_loss": False,
    "use_eaft_loss": False, "mixture_of_depths": None, "fp8": False, "fsdp": "", "ray_num_workers": 1,
    "tokenized_path": None, "eval_dataset": None, "freeze_language_model": False,
    "use_unsloth": False, "do_predict": False, "predict_with_generate": False,
    "ref_model": None, "export_quantization_bit": None, "upcast_layernorm": False,
    "ppo_score_norm": False, "ppo_buffer_size": 1, "create_new_adapter": False, "disable_shuffling": False,
    "resume_from_checkpoint": None, "moe_aux_loss_coef": None, "pissa_convert": True, "default_system": None,
    "tool_format": None,
}
# Options that only count while their feature is on: (key pattern, is the feature on?, what switches it on).
# LLaMA-Factory ignores them otherwise; we warn.
_STAGE = lambda c: c.get("stage", "sft")  # noqa: E731 - a one-line lookup beside the table that uses it
CONDITIONAL = [
    (r"lora_.*|loraplus_.*|use_rslora|use_dora|pissa_.*|additional_target",
     lambda c: c.get("finetuning_type", "lora") == "lora", "finetuning_type: lora"),
    (r"freeze_trainable_.*|freeze_extra_modules|use_llama_pro",
     lambda c: c.get("finetuning_type", "lora") == "freeze", "finetuning_type: freeze"),
    (r"oft_.*|module_dropout|additional_target", lambda c: c.get("finetuning_type") == "oft", "finetuning_type: oft"),
    (r"galore_.*", lambda c: c.get("use_galore"), "use_galore: true"),
    (r"badam_.*", lambda c: c.get("use_badam"), "use_badam: true"),
    (r"apollo_.*", lambda c: c.get("use_apollo"), "use_apollo: true"),
    (r"asft_.*", lambda c: c.get("use_asft_loss"), "use_asft_loss: true"),
    (r"fp8_.*", lambda c: c.get("fp8"), "fp8: true"),
    (r"fsdp_.*", lambda c: c.get("fsdp"), "fsdp"),
    (r"quantization_.*|double_quantization", lambda c: c.get("quantization_bit"), "quantization_bit"),
    (r"pref_.*|dpo_.*|simpo_.*", lambda c: _STAGE(c) == "dpo", "stage: dpo"),
    (r"pref_beta|pref_ftx|kto_.*", lambda c: _STAGE(c) == "kto", "stage: kto"),
    (r"ppo_.*|reward_model.*|max_new_tokens|temperature|top_p|top_k", lambda c: _STAGE(c) == "ppo", "stage: ppo"),
    (r"eval_steps", lambda c: c.get("eval_strategy", c.get("evaluation_strategy")) == "steps", "eval_strategy: steps"),
    (r"buffer_size|interleave_probs", lambda c: c.get("streaming") or c.get("mix_strategy", "concat") != "concat",
     "streaming or mix_strategy"),
    (r"export_.*", lambda c: "stage" not in c, "lit-factory export"),
]
# Why a feature is missing, when a hint helps.
UNSUPPORTED_HINTS = {
    "resume_from_checkpoint": "pass --ckpt_path to lit-factory fit",
    "eval_dataset": "use val_size",
    "do_predict": "use lit-factory predict with a recipe (recipes/predict/)",
}


def is_llamafactory_config(config: Any) -> bool:
    """A LLaMA-Factory file is flat: ``model_name_or_path`` at the top, no ``model``/``trainer``/``data`` section."""
    return (isinstance(config, dict) and "model_name_or_path" in config
            and not any(isinstance(config.get(section), dict) for section in ("model", "trainer", "data")))


def read_llamafactory_file(path: str | Path, overrides: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    """The file's keys (with ``key=value`` overrides applied, LLaMA-Factory's command-line habit), or None when
    the file is not in LLaMA-Factory format."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # not readable as LLaMA-Factory's: the recipe checks of `lit_factory.cli` name the problem
    if not is_llamafactory_config(config):
        return None
    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise LitFactoryError(f"{override!r}: LLaMA-Factory overrides are key=value (e.g. max_steps=10)")
        config[key.lstrip("-")] = yaml.safe_load(value)
    return config


def translate(config: dict[str, Any], source: str = "LLaMA-Factory YAML") -> Translation:
    """Translate a LLaMA-Factory config; raise ``LitFactoryError`` naming every key we cannot honour."""
    training = "stage" in config or "finetuning_type" in config or "dataset" in config
    kind = "train" if training else ("export" if "export_dir" in config else "chat")
    translation = Translation(source, kind)
    keys = _Keys(config, source, translation)
    # Features we lack stop the translation first, all named at once, before any value is read.
    missing = [key for key, default in UNSUPPORTED.items() if key in config and config[key] != default]
    if missing:
        _raise_unsupported(keys, missing)
    if kind == "train":
        translation.recipe = _training_recipe(keys)
    else:
        translation.command = _tool_command(keys, kind)
    _account_for_the_rest(keys)
    return translation


def _account_for_the_rest(keys: _Keys) -> None:
    unsupported = []
    for key, value in keys.config.items():
        if key in keys.used:
            continue
        switch = _inactive_feature(keys.config, key)
        if key in NO_EFFECT:
            keys.translation.warnings.append(f"`{key}` has no effect in lit-factory: {NO_EFFECT[key]}")
        elif key in UNSUPPORTED and value == UNSUPPORTED[key]:
            continue  # LLaMA-Factory's default: the feature is off, nothing to honour
        elif switch:
            keys.translation.warnings.append(f"`{key}` has no effect without `{switch}` (LLaMA-Factory ignores it too)")
        else:
            unsupported.append(key)
    if unsupported:
        _raise_unsupported(keys, unsupported)


def _raise_unsupported(keys: _Keys, names: list[str]) -> None:
    named = [f"`{key}: {keys.config[key]}`" + (f" ({UNSUPPORTED_HINTS[key]})" if key in UNSUPPORTED_HINTS else "")
             for key in names]
    raise LitFactoryError(f"{keys.source}: {', '.join(named)} {'is' if len(named) == 1 else 'are'} not supported "
                          "yet. Fix: remove these keys to run without those features.")


def _inactive_feature(config: dict[str, Any], key: str) -> Optional[str]:
    """What would switch on the feature ``key`` belongs to, when that feature is off in ``config``."""
    owners = [(is_on, switch) for pattern, is_on, switch in CONDITIONAL if re.fullmatch(pattern, key)]
    if owners and not any(is_on(config) for is_on, _ in owners):
        return owners[0][1]
    return None


# ---- training files ------------------------------------------------------------------------------------------------
def _training_recipe(keys: _Keys) -> dict[str, Any]:
    stage = _stage_class(keys)
    accumulate = int(keys.take("gradient_accumulation_steps", 1, "trainer.accumulate_grad_batches"))
    stage_args: dict[str, Any] = {"model": _model_args(keys), "finetuning": finetuning_method(keys)}
    stage_args["optimizer"] = optimizer_method(keys, stage_args["finetuning"])
    stage_args.update(_schedule(keys))
    stage_args.update(_stage_options(keys, stage))
    recipe = {
        "seed_everything": keys.take("seed", 42, "seed_everything"),
        "trainer": _trainer(keys, accumulate),
        "model": {"class_path": f"lit_factory.stages.{stage}", "init_args": stage_args},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": _data_args(keys, stage)},
    }
    if stage_args["optimizer"]["class_path"] == "lit_factory.optim.BAdamRatio" and recipe["trainer"]["gradient_clip_val"]:
        recipe["trainer"]["gradient_clip_val"] = None  # sparse gradients: torch cannot take their norm
        keys.translation.warnings.append("`max_grad_norm` has no effect with `badam_mode: ratio`: its sparse "
                                         "gradients cannot be clipped")
    for patch in stage_args["model"].get("patches", []):
        if patch["class_path"] == f"{PATCHES}.RopeScaling":  # stretch to the length training uses
            patch["init_args"]["context_length"] = recipe["data"]["init_args"]["cutoff_len"]
    return recipe


def _stage_class(keys: _Keys) -> str:
    stage = keys.take("stage", "sft", "model.class_path")
    if stage not in STAGES:
        raise keys.fail("stage", f"is not one of {list(STAGES)}")
    dft = keys.take("use_dft_loss", False, "model.class_path (lit_factory.stages.DFT)")
    if dft and stage != "sft":
        raise keys.fail("use_dft_loss", "needs stage: sft (DFT reweights the SFT loss)")
    if stage == "dpo":
        loss = keys.take("pref_loss", "sigmoid", "model.class_path / model.init_args.loss_type")
        if loss not in PREFERENCE_STAGES:
            raise keys.fail("pref_loss", f"is not supported yet; use one of {list(PREFERENCE_STAGES)}")
        return PREFERENCE_STAGES[loss]
    return "DFT" if dft else STAGES[stage]


def _model_args(keys: _Keys) -> dict[str, Any]:
    model: dict[str, Any] = {"path": keys.take("model_name_or_path", to="model.init_args.model.path")}
    adapters = keys.take("adapter_name_or_path", to="model.init_args.model.adapter")
    if adapters:
        names = [a.strip() for a in str(adapters).split(",") if a.strip()]
        if len(names) > 1:
            raise keys.fail("adapter_name_or_path", "names several adapters; merging them is not supported yet")
        model["adapter"] = names[0]
    model["dtype"] = "auto"  # bfloat16 on GPUs that have it, as LLaMA-Factory's infer_dtype: auto
    flash = keys.take("flash_attn", "auto", "model.init_args.model.attn_implementation")
    if flash not in ATTENTION:
        raise keys.fail("flash_attn", f"is not one of {list(ATTENTION)}")
    model["attn_implementation"] = ATTENTION[flash]
    # LLaMA-Factory checkpoints activations unless told not to.
    checkpointing = not keys.take("disable_gradient_checkpointing", False, "model.init_args.model.gradient_checkpointing")
    model["gradient_checkpointing"] = bool(keys.take("gradient_checkpointing", checkpointing,
                                                     "model.init_args.model.gradient_checkpointing"))
    tokens = keys.take("new_special_tokens", None, "model.init_args.model.new_special_tokens")
    if tokens:
        model["new_special_tokens"] = [t.strip() for t in str(tokens).split(",") if t.strip()]
    model["trust_remote_code"] = bool(keys.take("trust_remote_code", False, "model.init_args.model.trust_remote_code"))
    bits = keys.take("quantization_bit", None, "model.init_args.model.quantization")
    if bits is not None:
        method = keys.take("quantization_method", "bnb", "model.init_args.model.quantization (bitsandbytes)")
        if method != "bnb":
            raise keys.fail("quantization_method", "is not supported yet; lit-factory quantizes with bitsandbytes (bnb)")
        if bits not in (4, 8):
            raise keys.fail("quantization_bit", "is not supported yet; bitsandbytes quantizes to 4 or 8 bits")
        settings: dict[str, Any] = {"bits": int(bits)}
        if bits == 4:
            settings["quant_type"] = keys.take("quantization_type", "nf4",
                                               "model.init_args.model.quantization.init_args.quant_type")
        settings["double_quantization"] = bool(keys.take(
            "double_quantization", True, "model.init_args.model.quantization.init_args.double_quantization"))
        model["quantization"] = {"class_path": BITSANDBYTES, "init_args": settings}
    patches: list[dict[str, Any]] = []
    rope = keys.take("rope_scaling", None, f"model.init_args.model.patches ({PATCHES}.RopeScaling)")
    if rope is not None:
        if rope not in ("linear", "dynamic"):
            raise keys.fail("rope_scaling", "is not supported yet; use linear or dynamic")
        # context_length is the data's cutoff_len, filled in by `_training_recipe`.
        patches.append({"class_path": f"{PATCHES}.RopeScaling", "init_args": {"kind": rope}})
    if keys.take("shift_attn", False, f"model.init_args.model.patches ({PATCHES}.ShiftedSparseAttention)"):
        patches.append({"class_path": f"{PATCHES}.ShiftedSparseAttention"})
    if keys.take("enable_liger_kernel", False, f"model.init_args.model.patches ({PATCHES}.LigerKernels)"):
        # CUDA only: on a CPU machine the run stops in one line, as it says
        patches.append({"class_path": f"{PATCHES}.LigerKernels"})
    noise = keys.take("neftune_noise_alpha", None, f"model.init_args.model.patches ({PATCHES}.NEFTune)")
    if noise:
        patches.append({"class_path": f"{PATCHES}.NEFTune", "init_args": {"alpha": float(noise)}})
    if patches:
        model["patches"] = patches
    # Vision-language models; our defaults are LLaMA-Factory's (vision tower and projector frozen, 32²-768² pixels).
    for key in ("freeze_vision_tower", "freeze_multi_modal_projector"):
        if keys.has(key):
            model[key] = bool(keys.take(key, True, f"model.init_args.model.{key}"))
    for key in ("image_max_pixels", "image_min_pixels"):
        if keys.has(key):
            model[key] = int(keys.take(key, None, f"model.init_args.model.{key}"))
    return model


def _schedule(keys: _Keys) -> dict[str, Any]:
    name = keys.take("lr_scheduler_type", "linear", "model.init_args.lr_schedule")
    if name not in SCHEDULES:
        raise keys.fail("lr_scheduler_type", f"is not supported yet; use one of {list(SCHEDULES)}")
    schedule, honours_warmup = SCHEDULES[name]
    steps = keys.take("warmup_steps", 0, "model.init_args.warmup_steps")
    ratio = keys.take("warmup_ratio", 0.0, "model.init_args.warmup_steps (a fraction)")
    # transformers: warmup_steps wins when set; a ratio is a fraction of the total steps (ours below 1 too).
    warmup = int(steps) if steps and steps >= 1 else float(ratio or steps or 0)
    if warmup and not honours_warmup:
        keys.translation.warnings.append(f"`warmup_*` has no effect with `lr_scheduler_type: {name}` (as in transformers)")
        warmup = 0
    options: dict[str, Any] = {"lr_schedule": schedule, "warmup_steps": warmup}
    kwargs = dict(keys.take("lr_scheduler_kwargs", None, "model.init_args.min_lr_ratio") or {})
    if name == "cosine_with_min_lr":
        if "min_lr_rate" in kwargs:
            options["min_lr_ratio"] = float(kwargs.pop("min_lr_rate"))
        elif "min_lr" in kwargs:
            options["min_lr_ratio"] = float(kwargs.pop("min_lr")) / float(keys.config.get("learning_rate", 5e-5))
        else:
            raise keys.fail("lr_scheduler_type", "needs lr_scheduler_kwargs: {min_lr_rate: R} or {min_lr: LR}")
    if kwargs:
        raise keys.fail("lr_scheduler_kwargs", f"{sorted(kwargs)} are not supported yet")
    return options


def _stage_options(keys: _Keys, stage: str) -> dict[str, Any]:
    to = "model.init_args."
    if stage in ("DPO", "ORPO", "SimPO", "KTO"):
        options: dict[str, Any] = {"beta": float(keys.take("pref_beta", 0.1, to + "beta"))}
        ftx = float(keys.take("pref_ftx", 0.0, to + "sft_weight"))
        if stage == "DPO":
            options["loss_type"] = keys.config.get("pref_loss", "sigmoid")
            options["sft_weight"] = ftx
            options["label_smoothing"] = float(keys.take("dpo_label_smoothing", 0.0, to + "label_smoothing"))
        elif ftx:
            raise keys.fail("pref_ftx", f"is not supported yet for {stage}")
        if stage == "SimPO":
            options["gamma"] = float(keys.take("simpo_gamma", 0.5, to + "gamma"))
        if stage == "KTO":
            options["desirable_weight"] = float(keys.take("kto_chosen_weight", 1.0, to + "desirable_weight"))
            options["undesirable_weight"] = float(keys.take("kto_rejected_weight", 1.0, to + "undesirable_weight"))
        return options
    if stage == "PPO":
        if not keys.has("reward_model"):
            raise keys.fail("stage", "needs reward_model: the output folder of a reward-model run")
        reward_type = keys.take("reward_model_type", "lora", to + "reward_model_type")
        if reward_type not in ("lora", "full"):
            raise keys.fail("reward_model_type", "is not supported yet; use lora or full")
        # LLaMA-Factory's PPO: TRL's adaptive KL controller aiming at ppo_target, mini-batches of the train batch
        # size, and its generating defaults for rollouts.
        return {"reward_model": keys.take("reward_model", to=to + "reward_model"), "reward_model_type": reward_type,
                "ppo_epochs": int(keys.take("ppo_epochs", 4, to + "ppo_epochs")),
                "mini_batch_size": int(keys.config.get("per_device_train_batch_size", 8)),
                "target_kl": float(keys.take("ppo_target", 6.0, to + "target_kl")),
                "whiten_rewards": bool(keys.take("ppo_whiten_rewards", False, to + "whiten_rewards")),
                "max_new_tokens": int(keys.take("max_new_tokens", 1024, to + "max_new_tokens")),
                "temperature": float(keys.take("temperature", 0.95, to + "temperature")),
                "top_k": int(keys.take("top_k", 50, to + "top_k")),
                "top_p": float(keys.take("top_p", 0.7, to + "top_p"))}
    return {}


def _data_args(keys: _Keys, stage: str) -> dict[str, Any]:
    to = "data.init_args."
    dataset = keys.take("dataset", None, to + "dataset")
    if not dataset:
        raise keys.fail("dataset", "is empty; name the datasets of dataset_info.json to train on")
    data: dict[str, Any] = {
        "dataset_dir": keys.take("dataset_dir", "data", to + "dataset_dir"),
        "dataset": _names(dataset),
        "template": keys.take("template", None, to + "template") or "auto",
        "cutoff_len": int(keys.take("cutoff_len", 2048, to + "cutoff_len")),
        "batch_size": int(keys.take("per_device_train_batch_size", 8, to + "batch_size")),
        "val_size": float(keys.take("val_size", 0.0, to + "val_size")),
        "max_samples": keys.take("max_samples", None, to + "max_samples"),
        "train_on_prompt": bool(keys.take("train_on_prompt", False, to + "train_on_prompt")),
        "mask_history": bool(keys.take("mask_history", False, to + "mask_history")),
        "streaming": bool(keys.take("streaming", False, to + "streaming")),
        "mix_strategy": keys.take("mix_strategy", "concat", to + "mix_strategy"),
        "num_workers": int(keys.take("dataloader_num_workers", 0, to + "num_workers")),
        "seed": keys.config.get("seed", 42),
    }
    if data["val_size"] >= 1:
        data["val_size"] = int(data["val_size"])
    if keys.has("enable_thinking"):  # LLaMA-Factory's default (think) is the reasoning templates' own
        data["enable_thinking"] = bool(keys.take("enable_thinking", to=to + "enable_thinking"))
    if keys.has("per_device_eval_batch_size"):
        data["eval_batch_size"] = int(keys.take("per_device_eval_batch_size", to=to + "eval_batch_size"))
    if keys.has("interleave_probs"):
        data["interleave_probs"] = [float(p) for p in _names(keys.take("interleave_probs", to=to + "interleave_probs"))]
    if data["streaming"]:
        data["buffer_size"] = int(keys.take("buffer_size", 16384, to + "buffer_size"))
    if keys.has("preprocessing_num_workers"):
        data["preprocessing_num_workers"] = int(keys.take("preprocessing_num_workers",
                                                          to=to + "preprocessing_num_workers"))
    neat = bool(keys.take("neat_packing", False, to + "packing"))
    packing = keys.take("packing", None, to + "packing")
    if stage in ("SFT", "DFT") and (packing or neat):
        data["packing"] = True
        if not neat:
            keys.translation.warnings.append("`packing` packs with attention kept per conversation here "
                                             "(LLaMA-Factory's neat_packing); plain packing lets it cross")
    elif stage == "PreTrain":
        keys.used.add("packing")  # our pretrain objective always packs text into cutoff_len blocks (LF's default)
    elif packing or neat:
        raise keys.fail("packing" if packing else "neat_packing", f"is not supported yet for stage {stage}")
    return data


def _trainer(keys: _Keys, accumulate: int) -> dict[str, Any]:
    output_dir = keys.take("output_dir", "saves", "trainer.logger (save_dir) and trainer.default_root_dir")
    trainer: dict[str, Any] = {"accelerator": "auto", "devices": "auto", "precision": _precision(keys),
                               "accumulate_grad_batches": accumulate, "default_root_dir": output_dir}
    strategy = _deepspeed_strategy(keys)
    if strategy:
        trainer["strategy"] = strategy
    max_steps = int(keys.take("max_steps", -1, "trainer.max_steps"))
    epochs = float(keys.take("num_train_epochs", 3.0, "trainer.max_epochs / trainer.limit_train_batches"))
    if max_steps > 0:
        trainer["max_steps"] = max_steps  # as in transformers, max_steps overrides the epochs
    elif epochs == int(epochs):
        trainer["max_epochs"] = int(epochs)
    elif epochs < 1:
        # A fraction of one epoch: Lightning's limit_train_batches takes that share of the batches (the schedule's
        # total steps follow it).
        trainer["max_epochs"], trainer["limit_train_batches"] = 1, epochs
    else:
        raise keys.fail("num_train_epochs", "(a fraction above 1) is not supported yet; give max_steps instead")
    keys.used.add("num_train_epochs")
    trainer["gradient_clip_val"] = float(keys.take("max_grad_norm", 1.0, "trainer.gradient_clip_val"))
    trainer["log_every_n_steps"] = int(keys.take("logging_steps", 500, "trainer.log_every_n_steps"))
    evaluate = keys.take("eval_strategy", keys.take("evaluation_strategy", "no", "trainer.val_check_interval"),
                         "trainer.val_check_interval")
    if evaluate == "steps":
        # Lightning counts validation intervals in batches; transformers in optimizer steps.
        trainer["val_check_interval"] = int(keys.take("eval_steps", 500, "trainer.val_check_interval")) * accumulate
        trainer["check_val_every_n_epoch"] = None
    elif evaluate == "no":
        trainer["limit_val_batches"] = 0
        trainer["num_sanity_val_steps"] = 0
    elif evaluate != "epoch":
        raise keys.fail("eval_strategy", "is not one of no, steps, epoch")
    trainer["logger"] = _logger(keys, output_dir)
    checkpoint: dict[str, Any] = {
        "every_n_train_steps": int(keys.take("save_steps", 500, "trainer.callbacks (ModelCheckpoint)")),
        "save_weights_only": bool(keys.take("save_only_model", False, "trainer.callbacks (ModelCheckpoint)")),
        "save_top_k": -1,
    }
    limit = keys.take("save_total_limit", None, "trainer.callbacks (ModelCheckpoint.save_top_k)")
    if limit:
        checkpoint.update(save_top_k=int(limit), monitor="step", mode="max")  # keep the newest, as transformers
    trainer["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    if keys.take("plot_loss", False, "trainer.callbacks (lit_factory.callbacks.LossPlot)"):
        # training_loss.png / training_eval_loss.png in output_dir, as LLaMA-Factory's plot_loss; first, so that
        # --trainer.callbacks.init_args.* overrides keep reaching the checkpoint callback (the last one).
        trainer["callbacks"].insert(0, {"class_path": "lit_factory.callbacks.LossPlot"})
    return trainer


def _precision(keys: _Keys) -> str:
    if keys.take("pure_bf16", False, "trainer.precision"):
        return "bf16-true"
    if keys.take("bf16", False, "trainer.precision"):
        return "bf16-mixed"
    if keys.take("fp16", False, "trainer.precision"):
        return "16-mixed"
    return "32-true"


def _deepspeed_strategy(keys: _Keys) -> Optional[dict[str, Any]]:
    path = keys.take("deepspeed", None, "trainer.strategy (DeepSpeedStrategy)")
    if not path:
        return None
    # The file itself goes to our DeepSpeed strategy, which fills its "auto" values from the recipe as
    # transformers' integration does (lit_factory.distributed.deepspeed).
    if Path(path).is_file():
        return {"class_path": "lit_factory.distributed.DeepSpeed", "init_args": {"config": str(path)}}
    match = re.search(r"ds_z(\d)(_offload)?_config\.json$", str(path))
    if match is None:
        raise keys.fail("deepspeed", "is not a file; give the path of a DeepSpeed JSON config")
    stage, offload_optimizer = int(match.group(1)), bool(match.group(2))
    keys.translation.warnings.append(f"`deepspeed: {path}` is not a file here; its name says ZeRO stage {stage}"
                                     f"{' with offloading' if offload_optimizer else ''}")
    return {"class_path": "lit_factory.distributed.DeepSpeed",
            "init_args": {"stage": stage, "offload_optimizer": offload_optimizer,
                          "offload_parameters": offload_optimizer and stage == 3}}


def _logger(keys: _Keys, output_dir: str) -> dict[str, Any]:
    report = keys.take("report_to", "none", "trainer.logger")
    report = report[0] if isinstance(report, list) and len(report) == 1 else report
    # name="" and version="" make the run directory output_dir itself, where LLaMA-Factory writes its outputs.
    if report in ("none", None, "tensorboard"):
        # With report_to: none LLaMA-Factory still writes a local log (trainer_log.jsonl); ours is metrics.csv.
        class_path = "TensorBoardLogger" if report == "tensorboard" else "CSVLogger"
        init_args = {"save_dir": output_dir, "name": "", "version": ""}
        if class_path == "TensorBoardLogger":
            init_args["default_hp_metric"] = False  # no hp_metric stuck at -1
        return {"class_path": f"lightning.pytorch.loggers.{class_path}", "init_args": init_args}
    if report in ("wandb", "mlflow"):
        class_path = {"wandb": "WandbLogger", "mlflow": "MLFlowLogger"}[report]
        return {"class_path": f"lightning.pytorch.loggers.{class_path}", "init_args": {"save_dir": output_dir}}
    raise keys.fail("report_to", "is not supported yet; use none, tensorboard, wandb or mlflow")


# ---- merge and inference files ------------------------------------------------------------------------------------
def _tool_command(keys: _Keys, kind: str) -> list[str]:
    command = [kind, "--model", str(keys.take("model_name_or_path", to="--model"))]
    adapter = keys.take("adapter_name_or_path", None, "--adapter")
    if adapter:
        command += ["--adapter", str(adapter)]
    if kind == "export":
        if keys.take("trust_remote_code", False, "--trust-remote-code"):
            command.append("--trust-remote-code")
        command += ["--output", str(keys.take("export_dir", to="--output"))]
        size = keys.take("export_size", 5, "--max-shard-size")
        command += ["--max-shard-size", f"{int(size)}GB"]
        if keys.take("template"):
            keys.translation.warnings.append("`template` has no effect on export: the tokenizer is copied with its "
                                             "own chat template")
        return command
    command += ["--template", str(keys.take("template", None, "--template") or "auto")]
    if keys.take("trust_remote_code", False):
        keys.translation.warnings.append("`trust_remote_code` has no effect: chat and serve load models without "
                                         "repository code")
    backend = keys.take("infer_backend", "huggingface", "--backend (lit-factory serve)")
    if backend not in ("huggingface", "vllm"):
        raise keys.fail("infer_backend", "is not supported yet; use huggingface or vllm")
    keys.translation.serve_options = ["--backend", "transformers" if backend == "huggingface" else "vllm"]
    return command

