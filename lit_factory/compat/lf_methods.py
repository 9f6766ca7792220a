"""LLaMA-Factory's method keys -> our fine-tuning component and optimizer (``finetuning_type``, ``lora_*``,
``oft_*``, ``freeze_*``, ``use_galore``/``use_apollo``/``use_badam``/``use_adam_mini``/``use_muon``, LoRA+).

Part of ``lit_factory.compat.llamafactory``'s translation; ``keys`` is its ``lit_factory.compat.keys.Keys`` (``take`` marks a key as
accounted for and records where it went, ``fail`` makes the one-line error naming it).
"""

from __future__ import annotations

from typing import Any

from lit_factory.compat.keys import Keys

OPTIMIZERS = {"adamw_torch": "torch.optim.AdamW", "adamw_torch_fused": "torch.optim.AdamW",
              "adamw_8bit": "bitsandbytes.optim.AdamW8bit", "paged_adamw_8bit": "bitsandbytes.optim.PagedAdamW8bit"}
_FT = "model.init_args.finetuning"
_OPT = "model.init_args.optimizer"


def names(value: Any) -> list[str]:
    """A LLaMA-Factory list: a YAML list or a comma-separated string."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _targets(value: Any) -> Any:
    return "all" if value == "all" else names(value)


def finetuning_method(keys: Keys) -> dict[str, Any]:
    """``finetuning``: Full, Freeze/LlamaPro, LoRA (with its variants) or OFT."""
    kind = keys.take("finetuning_type", "lora", f"{_FT}.class_path")
    if kind == "full":
        return {"class_path": "lit_factory.model.Full"}
    if kind == "freeze":
        return _freeze(keys)
    if kind == "oft":
        return _oft(keys)
    if kind != "lora":
        raise keys.fail("finetuning_type", "is not supported yet; use lora, oft, freeze or full")
    rank = int(keys.take("lora_rank", 8, f"{_FT}.init_args.r"))
    init_args: dict[str, Any] = {
        "r": rank,
        # LLaMA-Factory's lora_alpha defaults to twice the rank.
        "alpha": float(keys.take("lora_alpha", None, f"{_FT}.init_args.alpha") or rank * 2),
        "dropout": float(keys.take("lora_dropout", 0.0, f"{_FT}.init_args.dropout")),
        "target_modules": _targets(keys.take("lora_target", "all", f"{_FT}.init_args.target_modules")),
    }
    extra = keys.take("additional_target", None, f"{_FT}.init_args.modules_to_save")
    if extra:
        init_args["modules_to_save"] = names(extra)
    if keys.take("use_rslora", False, f"{_FT}.init_args.use_rslora"):
        init_args["use_rslora"] = True
    if keys.take("use_dora", False, f"{_FT}.init_args.use_dora"):
        init_args["use_dora"] = True
    if keys.take("pissa_init", False, f"{_FT}.init_args.init"):
        iterations = int(keys.take("pissa_iter", 16, f"{_FT}.init_args.init"))
        init_args["init"] = "pissa" if iterations < 0 else f"pissa_niter_{iterations}"
        # Our PiSSA adapters are always saved converted for the original base (pissa_convert: false stops earlier).
        keys.take("pissa_convert", True, f"{_FT} (saved converted, always)")
    return {"class_path": "lit_factory.model.LoRA", "init_args": init_args}


def _freeze(keys: Keys) -> dict[str, Any]:
    layers = int(keys.take("freeze_trainable_layers", 2, f"{_FT}.init_args.trainable_layers"))
    modules = keys.take("freeze_trainable_modules", "all", f"{_FT}.init_args.trainable_modules")
    extra = keys.take("freeze_extra_modules", None, f"{_FT}.init_args.extra_modules")
    init_args: dict[str, Any] = {}
    if keys.take("use_llama_pro", False, f"{_FT}.class_path"):
        class_path, init_args["num_expanded_blocks"] = "lit_factory.model.LlamaPro", layers
    elif layers < 0:
        raise keys.fail("freeze_trainable_layers", "(the first layers) is not supported yet; use a positive count")
    else:
        class_path, init_args["trainable_layers"] = "lit_factory.model.Freeze", layers
    if modules and modules != "all":
        init_args["trainable_modules"] = names(modules)
    if extra:
        init_args["extra_modules"] = names(extra)
    return {"class_path": class_path, "init_args": init_args}


def _oft(keys: Keys) -> dict[str, Any]:
    # LLaMA-Factory's defaults: oft_rank 0 (inferred), oft_block_size 32, module_dropout 0.
    init_args: dict[str, Any] = {
        "block_size": int(keys.take("oft_block_size", 32, f"{_FT}.init_args.block_size")),
        "r": int(keys.take("oft_rank", 0, f"{_FT}.init_args.r")),
        "target_modules": _targets(keys.take("oft_target", "all", f"{_FT}.init_args.target_modules")),
        "module_dropout": float(keys.take("module_dropout", 0.0, f"{_FT}.init_args.module_dropout")),
    }
    if init_args["r"] and init_args["block_size"]:
        # PEFT takes one of the two; LLaMA-Factory passes both and PEFT refuses them together.
        raise keys.fail("oft_rank", "and oft_block_size cannot both be set; set one of them to 0")
    extra = keys.take("additional_target", None, f"{_FT}.init_args.modules_to_save")
    if extra:
        init_args["modules_to_save"] = names(extra)
    return {"class_path": "lit_factory.model.OFT", "init_args": init_args}


def optimizer_method(keys: Keys, finetuning: dict[str, Any]) -> dict[str, Any]:
    """``optimizer``: the plain optimizer ``optim`` names, or the method LLaMA-Factory's switches pick (in its
    order: GaLore, APOLLO, LoRA+, BAdam, Adam-mini, Muon)."""
    lr = float(keys.take("learning_rate", 5e-5, f"{_OPT} (lr)"))
    decay = float(keys.take("weight_decay", 0.0, f"{_OPT} (weight_decay)"))
    if decay:
        keys.used.add("weight_decay")
        keys.translation.warnings.append("`weight_decay` applies to every trainable parameter here; transformers "
                                         "exempts biases and norm weights")
    betas = [float(keys.take("adam_beta1", 0.9, f"{_OPT}.init_args.betas")),
             float(keys.take("adam_beta2", 0.999, f"{_OPT}.init_args.betas"))]
    eps = float(keys.take("adam_epsilon", 1e-8, f"{_OPT}.init_args.eps"))
    adam = {"lr": lr, "weight_decay": decay, "betas": betas, "eps": eps}
    name = keys.take("optim", "adamw_torch", f"{_OPT}.class_path")
    if name not in OPTIMIZERS:
        raise keys.fail("optim", f"is not supported yet; use one of {list(OPTIMIZERS)}")
    base = {"class_path": OPTIMIZERS[name], "init_args": adam}
    full = finetuning["class_path"] == "lit_factory.model.Full"
    accumulate = int(keys.config.get("gradient_accumulation_steps", 1))
    # Every switch is read (each is accounted for, on or off); LLaMA-Factory allows one of them at a time.
    switches = [s for s in ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
                if keys.take(s, False, f"{_OPT}.class_path")]
    if len(switches) > 1:
        raise keys.fail(switches[1], f"cannot be combined with `{switches[0]}`; choose one optimizer method")
    chosen = switches[0] if switches else None
    for switch, build in (("use_galore", _galore), ("use_apollo", _apollo)):
        if chosen == switch:
            if not full:
                raise keys.fail(switch, "needs finetuning_type: full")
            method = build(keys, lr, decay)
            if method["init_args"]["layerwise"]:
                layerwise = switch.replace("use_", "") + "_layerwise"
                if accumulate != 1:
                    raise keys.fail(layerwise, "updates weights during backward and cannot accumulate gradients; "
                                               "set gradient_accumulation_steps: 1")
                keys.translation.warnings.append(f"`{layerwise}` frees each gradient as soon as its weight is "
                                                 "updated: `max_grad_norm` clipping has nothing left to clip")
            return method
    ratio = keys.take("loraplus_lr_ratio", None, f"{_OPT}.init_args.lr_ratio")
    if ratio:
        return {"class_path": "lit_factory.optim.LoRAPlus", "init_args": {
            "optimizer": base, "lr": lr, "lr_ratio": float(ratio), "weight_decay": decay,
            "embedding_lr": float(keys.take("loraplus_lr_embedding", 1e-6, f"{_OPT}.init_args.embedding_lr"))}}
    if chosen == "use_badam":
        return _badam(keys, base, accumulate)
    if chosen == "use_adam_mini":
        return {"class_path": "lit_factory.optim.AdamMini",
                "init_args": {"lr": lr, "betas": betas, "eps": eps, "weight_decay": decay}}
    if chosen == "use_muon":
        return {"class_path": "lit_factory.optim.Muon",
                "init_args": {"lr": lr, "weight_decay": decay, "adamw_betas": betas, "adamw_eps": eps}}
    return base


def _galore(keys: Keys, lr: float, decay: float) -> dict[str, Any]:
    to = f"{_OPT}.init_args."
    return {"class_path": "lit_factory.optim.GaLore", "init_args": {
        "lr": lr, "weight_decay": decay,
        "rank": int(keys.take("galore_rank", 16, to + "rank")),
        "update_interval": int(keys.take("galore_update_interval", 200, to + "update_interval")),
        "scale": float(keys.take("galore_scale", 2.0, to + "scale")),
        "projection": keys.take("galore_proj_type", "std", to + "projection"),
        "target_modules": _targets(keys.take("galore_target", "all", to + "target_modules")),
        "layerwise": bool(keys.take("galore_layerwise", False, to + "layerwise"))}}


def _apollo(keys: Keys, lr: float, decay: float) -> dict[str, Any]:
    to = f"{_OPT}.init_args."
    if keys.config.get("optim", "adamw_torch") != "adamw_torch":
        raise keys.fail("optim", "is not supported with use_apollo (APOLLO is an AdamW); use adamw_torch")
    return {"class_path": "lit_factory.optim.APOLLO", "init_args": {
        "lr": lr, "weight_decay": decay,
        "rank": int(keys.take("apollo_rank", 16, to + "rank")),
        "update_interval": int(keys.take("apollo_update_interval", 200, to + "update_interval")),
        "scale": float(keys.take("apollo_scale", 32.0, to + "scale")),
        "projection": keys.take("apollo_proj", "random", to + "projection"),
        "projection_side": keys.take("apollo_proj_type", "std", to + "projection_side"),
        "scale_type": keys.take("apollo_scale_type", "channel", to + "scale_type"),
        "scale_front": bool(keys.take("apollo_scale_front", False, to + "scale_front")),
        "target_modules": _targets(keys.take("apollo_target", "all", to + "target_modules")),
        "layerwise": bool(keys.take("apollo_layerwise", False, to + "layerwise"))}}


def _badam(keys: Keys, base: dict[str, Any], accumulate: int) -> dict[str, Any]:
    to = f"{_OPT}.init_args."
    mode = keys.take("badam_mode", "layer", f"{_OPT}.class_path (BAdam or BAdamRatio)")
    if mode == "ratio":
        if accumulate != 1:
            raise keys.fail("badam_mode", "sparsifies gradients during backward and cannot accumulate them; set "
                                          "gradient_accumulation_steps: 1")
        for key in ("badam_switch_mode", "badam_switch_interval", "badam_start_block"):
            if keys.has(key):
                keys.take(key)
                keys.translation.warnings.append(f"`{key}` has no effect with `badam_mode: ratio` "
                                                 "(LLaMA-Factory ignores it too)")
        adam = base["init_args"]
        return {"class_path": "lit_factory.optim.BAdamRatio", "init_args": {
            "lr": adam["lr"], "betas": adam["betas"], "eps": adam["eps"],
            "update_ratio": float(keys.take("badam_update_ratio", 0.05, to + "update_ratio")),
            "mask_mode": keys.take("badam_mask_mode", "adjacent", to + "mask_mode")}}
    if mode != "layer":
        raise keys.fail("badam_mode", "is not one of layer, ratio")
    order = keys.take("badam_switch_mode", "ascending", to + "order")
    if order not in ("ascending", "descending", "random"):
        raise keys.fail("badam_switch_mode", "is not supported yet; use ascending, descending or random")
    options = {"optimizer": base, "order": order,
               "switch_every": int(keys.take("badam_switch_interval", 50, to + "switch_every"))}
    if keys.has("badam_start_block"):
        options["start_block"] = int(keys.take("badam_start_block", to=to + "start_block"))
    return {"class_path": "lit_factory.optim.BAdam", "init_args": options}
