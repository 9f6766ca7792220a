"""BAdam (Luo et al., 2024): block-coordinate Adam — one decoder layer trains at a time, the others are frozen."""

from __future__ import annotations

import importlib.util
from typing import Literal, Optional

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.optim.factory import OptimizerCallable, OptimizerFactory


class BAdam(OptimizerFactory):
    """BAdam through the ``badam`` package's ``BlockOptimizer``: each decoder layer is a block; the active block
    switches every ``switch_every`` optimizer steps, and only it holds gradients, a float32 copy and Adam states.

    Embeddings, final norm and output head stay frozen (as in BAdam's default). Use with full fine-tuning
    (``finetuning`` unset or ``lit_factory.model.Full``) and, for the memory saving, half-precision weights.

    Args:
        optimizer: The Adam-style optimizer run on the active block (class path + init_args).
        switch_every: Optimizer steps between block switches.
        order: ``ascending`` (first layer first), ``descending`` or ``random`` (a fresh permutation per sweep).
        start_block: Index of the first active layer (default: first for ascending, last for descending).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        switch_every: int = 50,
        order: Literal["ascending", "descending", "random"] = "ascending",
        start_block: Optional[int] = None,
    ) -> None:
        if importlib.util.find_spec("badam") is None:
            raise LitFactoryError("optimizer: BAdam needs the badam package (pip install badam)")
        if switch_every < 1:
            raise LitFactoryError("optimizer.init_args.switch_every: must be at least 1")
        self.optimizer = optimizer
        self.switch_every = switch_every
        self.order = order
        self.start_block = start_block

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from badam import BlockOptimizer

        from lit_factory.model.adapters import decoder_layers

        if hasattr(model, "peft_config"):
            raise LitFactoryError("optimizer: BAdam trains whole layers; use it with full fine-tuning, not LoRA")
        prefix, layers = decoder_layers(model)
        if self.start_block is not None and not 0 <= self.start_block < len(layers):
            raise LitFactoryError(f"optimizer.init_args.start_block: the model has layers 0..{len(layers) - 1}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        blocks = [[f"{prefix}.{i}."] for i in range(len(layers))]
        return _ClosureFirst(BlockOptimizer)(
            base_optimizer=self.optimizer([p for _, p in named]),
            named_parameters_list=named,
            block_prefix_list=blocks,
            switch_block_every=self.switch_every,
            switch_mode=self.order,
            start_block=self.start_block,
            verbose=0,
        )


def _ClosureFirst(block_optimizer: type) -> type:
    """Two adjustments of badam's ``BlockOptimizer`` for Lightning. It copies gradients to its float32 block before stepping, but Lightning passes forward and
    backward as the step's closure; run the closure first so the gradients exist when BAdam reads them."""

    class BlockOptimizerForLightning(block_optimizer):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - BlockOptimizer's arguments
            super().__init__(*args, **kwargs)
            # badam tests `(global_step + 1) % K` AFTER counting the step, so its first block would get K - 1
            # steps; starting the count at -1 gives every block exactly K steps.
            self.global_step = -1

        def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer.step signature
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            super().step()
            return loss

    return BlockOptimizerForLightning
