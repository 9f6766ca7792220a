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
            raise LitFactoryError(
                "model.init_args.optimizer: BAdam needs the badam package (pip install badam). Fix: install it."
            )
        if switch_every < 1:
            raise LitFactoryError(f"model.init_args.optimizer.init_args.switch_every: {switch_every}. Fix: at least 1.")
        self.optimizer = optimizer
        self.switch_every = switch_every
        self.order = order
        self.start_block = start_block

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from badam import BlockOptimizer

        from lit_factory.model.layers import decoder_layers

        if hasattr(model, "peft_config"):
            raise LitFactoryError(
                "model.init_args.optimizer: BAdam trains whole layers, not an adapter. Fix: use it with full "
                "fine-tuning (model.init_args.finetuning: Full), not LoRA."
            )
        prefix, layers = decoder_layers(model)
        if self.start_block is not None and not 0 <= self.start_block < len(layers):
            raise LitFactoryError(
                f"model.init_args.optimizer.init_args.start_block: {self.start_block} is not a layer. Fix: give one of "
                f"0..{len(layers) - 1}."
            )
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


class BAdamRatio(OptimizerFactory):
    """BAdam's ratio mode through the ``badam`` package's ``BlockOptimizerRatio`` (LLaMA-Factory's
    ``badam_mode: ratio``): every trainable matrix updates only ``update_ratio`` of its entries per phase, with Adam
    states for those entries alone; the chosen entries move on every ``switch_every`` steps.

    Gradients are made sparse in each parameter's post-accumulate-grad hook, so this mode needs
    ``trainer.accumulate_grad_batches: 1`` and no gradient clipping (``trainer.gradient_clip_val: null``).
    Embeddings and the output head stay frozen, as in BAdam.

    Args:
        lr: Learning rate.
        betas: Adam's betas.
        eps: Adam's epsilon.
        update_ratio: Share of each matrix's entries that train in a phase.
        mask_mode: ``adjacent`` (a contiguous run of entries, moving along the matrix) or ``scatter`` (random ones).
        switch_every: Optimizer steps between moving the trained entries.
    """

    def __init__(
        self,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        update_ratio: float = 0.05,
        mask_mode: Literal["adjacent", "scatter"] = "adjacent",
        switch_every: int = 100,
    ) -> None:
        if importlib.util.find_spec("badam") is None:
            raise LitFactoryError(
                "model.init_args.optimizer: BAdamRatio needs the badam package (pip install badam). Fix: install it."
            )
        if not 0 < update_ratio <= 1:
            raise LitFactoryError(
                f"model.init_args.optimizer.init_args.update_ratio: {update_ratio}. Fix: a value in (0, 1]."
            )
        if switch_every < 1:
            raise LitFactoryError(f"model.init_args.optimizer.init_args.switch_every: {switch_every}. Fix: at least 1.")
        self.lr = lr
        self.betas = tuple(betas)
        self.eps = eps
        self.update_ratio = update_ratio
        self.mask_mode = mask_mode
        self.switch_every = switch_every

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from badam import BlockOptimizerRatio

        if hasattr(model, "peft_config"):
            raise LitFactoryError(
                "model.init_args.optimizer: BAdamRatio trains the model's own weights. Fix: use it with full "
                "fine-tuning (model.init_args.finetuning: Full)."
            )
        # badam finds the embeddings and head by the names "embed" and "lm_head"; freeze them by module instead, so
        # that any architecture works, and tell badam to leave the (now frozen) rest alone.
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                module.requires_grad_(False)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return _RefuseAccumulation(BlockOptimizerRatio)(
            param_groups=[{"params": [p for _, p in named]}], named_parameters_list=named,
            update_ratio=self.update_ratio, mask_mode=self.mask_mode, switch_every=self.switch_every,
            lr=self.lr, betas=self.betas, eps=self.eps, verbose=0, include_embedding=True, include_lm_head=True,
        )


def _RefuseAccumulation(ratio_optimizer: type) -> type:  # noqa: N802 - returns a class
    """``BlockOptimizerRatio`` sparsifies each gradient as soon as backward completes it; a second micro-batch
    would add a dense gradient to that sparse one. Its hooks run inside ``step``'s closure, except when Lightning
    accumulates, which is refused in one line."""

    class BlockOptimizerRatioForLightning(ratio_optimizer):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - BlockOptimizerRatio's arguments
            self._inside_step = False
            super().__init__(*args, **kwargs)

        def sparse_update_hook(self):  # noqa: ANN201 - badam's hook factory
            sparsify = super().sparse_update_hook()

            def hook(parameter: torch.Tensor) -> None:
                if not self._inside_step:
                    raise LitFactoryError("model.init_args.optimizer: BAdamRatio sparsifies gradients during backward "
                                          "and cannot accumulate them. Fix: set trainer.accumulate_grad_batches: 1.")
                sparsify(parameter)

            return hook

        def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
            self._inside_step = True
            try:
                return super().step(closure)
            except NotImplementedError as err:  # Lightning clips inside the closure; torch has no sparse norm
                if "Sparse" not in str(err):
                    raise
                raise LitFactoryError("model.init_args.optimizer: BAdamRatio's gradients are sparse and cannot be "
                                      "clipped. Fix: set trainer.gradient_clip_val: null.") from None
            finally:
                self._inside_step = False

    return BlockOptimizerRatioForLightning
