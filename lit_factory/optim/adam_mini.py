"""Adam-mini (Zhang et al., 2024): one second-moment value per block (attention head, output neuron, token
embedding) instead of per weight, cutting Adam's state memory nearly in half."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.optim.factory import OptimizerFactory


class AdamMini(OptimizerFactory):
    """Adam-mini through the ``adam-mini`` package (``Adam_mini``), partitioned by parameter names and the model's
    attention shape as LLaMA-Factory's ``use_adam_mini`` does.

    Args:
        lr: Learning rate.
        betas: Adam's betas.
        eps: Adam's epsilon.
        weight_decay: Decoupled weight decay (norms and biases are exempt, as in the package).
    """

    def __init__(self, lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if importlib.util.find_spec("adam_mini") is None:
            raise LitFactoryError(
                "model.init_args.optimizer: AdamMini needs the adam-mini package (pip install adam-mini). Fix: install "
                "it."
            )
        self.lr = lr
        self.betas = tuple(betas)
        self.eps = eps
        self.weight_decay = weight_decay

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        from adam_mini import Adam_mini

        text = model.config.get_text_config()
        hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
        if not hidden or not heads:
            raise LitFactoryError(
                "model.init_args.optimizer: AdamMini needs hidden_size and num_attention_heads in the model config "
                f"({type(text).__name__} has neither). Fix: use AdamW for this model."
            )
        # Queries and keys are split into one block per head of hidden_size**2 / heads weights.
        return Adam_mini(
            named_parameters=list(model.named_parameters()), lr=self.lr, betas=self.betas, eps=self.eps,
            weight_decay=self.weight_decay, dim=hidden, n_heads=heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or heads, verbose=False,
        )

