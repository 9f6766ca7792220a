"""LoRA+ (Hayou et al., 2024): the LoRA ``B`` matrices learn ``lr_ratio`` times faster than ``A``."""

from __future__ import annotations

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.optim.factory import OptimizerCallable, OptimizerFactory


class LoRAPlus(OptimizerFactory):
    """LoRA+ parameter groups (PEFT's ``create_loraplus_optimizer``) around any optimizer.

    Args:
        optimizer: The optimizer to run on the groups (class path + init_args; its own ``lr`` is overridden per group).
        lr: Learning rate of the ``A`` matrices (and of anything else that trains).
        lr_ratio: ``lr(B) / lr(A)``; the LoRA+ paper uses 16 for fine-tuning.
        embedding_lr: Learning rate of LoRA adapters on embedding layers.
        weight_decay: Weight decay of every group but biases and norms under ``B``'s learning rate.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-4,
        lr_ratio: float = 16.0,
        embedding_lr: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr_ratio < 1:
            raise LitFactoryError(
                f"model.init_args.optimizer.init_args.lr_ratio: {lr_ratio}; LoRA+ wants B to learn faster than A. Fix: "
                "use a ratio >= 1 (the paper uses 16)."
            )
        self.optimizer = optimizer
        self.lr = lr
        self.lr_ratio = lr_ratio
        self.embedding_lr = embedding_lr
        self.weight_decay = weight_decay

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from peft import PeftModel
        from peft.optimizers import create_loraplus_optimizer

        if not isinstance(model, PeftModel):
            raise LitFactoryError("model.init_args.optimizer: LoRAPlus needs LoRA. Fix: set "
                                  "model.init_args.finetuning.class_path: lit_factory.model.LoRA.")

        def with_groups(groups: list[dict], **_: object) -> torch.optim.Optimizer:
            # Every group carries its own lr; drop empty ones (e.g. no LoRA on embeddings).
            return self.optimizer([group for group in groups if group["params"]])

        with_groups.__name__ = "LoRAPlusGroups"
        return create_loraplus_optimizer(
            model, with_groups, lr=self.lr, loraplus_lr_ratio=self.lr_ratio,
            loraplus_lr_embedding=self.embedding_lr, loraplus_weight_decay=self.weight_decay,
        )
