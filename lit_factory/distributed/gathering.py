"""Whole weights from sharded ones, for writing the Hugging Face / PEFT output folder."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch


@contextmanager
def whole_weights(strategy: Any, module: torch.nn.Module) -> Iterator[None]:
    """Inside this context global rank 0's ``module`` holds its whole (unsharded) weights, so the stage's own
    ``write_outputs`` writes the same files as a one-device run. Every rank must enter it (it gathers).

    - ``lit_factory.distributed.FSDP`` (FSDP2): its ``whole_weights`` (a full state dict gathered to rank 0's CPU).
    - Lightning's ``FSDPStrategy`` (FSDP1, CUDA): ``summon_full_params`` on the wrapped root, to rank 0 only, in CPU
      memory, read-only.
    - DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters`` over the module's parameters, read-only. It gathers
      on every rank, so the model must fit whole in one device's memory at the end of training (the LoRA case; for
      larger full fine-tunes keep Lightning's DeepSpeed checkpoint and convert it with DeepSpeed's zero_to_fp32).
    - Anything else (one device, DDP, ZeRO-1/2): the weights are already whole.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if hasattr(strategy, "whole_weights"):
        context: Any = strategy.whole_weights(module)
    elif isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        context = FullyShardedDataParallel.summon_full_params(
            strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True)
    elif isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    else:
        context = nullcontext()
    with context:
        yield
