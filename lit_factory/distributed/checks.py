"""Strategy, machine and stage combinations that cannot run, refused in one line before anything starts."""

from __future__ import annotations

from typing import Any

from lit_factory.errors import LitFactoryError

WHAT_RUNS = ("one device, DDP (recipes/distributed/ddp.yaml) and FSDP (recipes/distributed/fsdp.yaml) run on CPU "
             "and GPUs; DeepSpeed needs CUDA GPUs")


def check_strategy(trainer: Any, stage: Any) -> None:
    """Raise ``LitFactoryError`` for a strategy the machine or the stage cannot run (see the README's "Multiple GPUs
    and nodes" table); Lightning would fail later with a traceback, some only after the model is built."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    from lit_factory.distributed.fsdp import FSDP
    from lit_factory.stages.ppo import PPO
    from lit_factory.stages.preference import ReferenceStage

    strategy = trainer.strategy
    on_cuda = isinstance(trainer.accelerator, CUDAAccelerator)
    name = type(strategy).__name__

    if hasattr(strategy, "check_settings"):
        strategy.check_settings()
    shards = isinstance(strategy, (FSDP, FSDPStrategy, DeepSpeedStrategy))
    if isinstance(stage, PPO) and shards:
        raise LitFactoryError(f"trainer.strategy: PPO does not run under {name} yet (its rollouts generate with "
                              "the policy's whole weights). Fix: train PPO on one device or with DDP "
                              "(recipes/distributed/ddp.yaml).")
    model_args = getattr(stage, "model_args", None)
    if getattr(model_args, "quantization", None) is not None and shards:
        raise LitFactoryError(f"model.init_args.model.quantization: a quantized (QLoRA) model does not train under "
                              f"{name} in lit-factory (FSDP2 and DeepSpeed cannot shard bitsandbytes weights here). "
                              "Fix: train QLoRA on one device or with DDP (recipes/distributed/ddp.yaml), or shard "
                              "the unquantized model with recipes/distributed/fsdp.yaml.")
    zero3 = isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3
    if isinstance(stage, ReferenceStage) and zero3 and stage.reference_source == "copy":
        raise LitFactoryError("model.init_args.reference: a copy of the reference model cannot be made of ZeRO-3 "
                              "partitions. Fix: set reference: precomputed, or train a LoRA adapter (the reference "
                              "is then the base with the adapter disabled).")
    if isinstance(strategy, DeepSpeedStrategy) and not on_cuda:
        raise LitFactoryError(f"trainer.strategy: DeepSpeed runs only on CUDA GPUs and this run's accelerator is "
                              f"{type(trainer.accelerator).__name__}. Fix: on this machine use "
                              "recipes/distributed/ddp.yaml or fsdp.yaml; " + WHAT_RUNS + ".")
    backend = getattr(strategy, "_process_group_backend", None)
    if backend == "nccl" and not on_cuda:
        raise LitFactoryError("trainer.strategy.init_args.process_group_backend: nccl needs CUDA GPUs. Fix: use "
                              "gloo on CPU (or leave it unset: Lightning picks gloo for CPU, nccl for GPUs).")
    if isinstance(strategy, ModelParallelStrategy) and not isinstance(strategy, FSDP):
        raise LitFactoryError("trainer.strategy: ModelParallelStrategy needs the stage to apply its own "
                              "parallelism, which lit-factory's stages do not. Fix: use lit_factory.distributed.FSDP "
                              "(recipes/distributed/fsdp.yaml).")
