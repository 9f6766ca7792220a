"""Fine-tuning methods: which parameters train. A recipe picks one by class path, e.g.
``finetuning: {class_path: lit_factory.model.LoRA, init_args: {r: 16}}``.

Each method is a small class whose ``apply`` takes the freshly built model and returns the model to train.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional, Union

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from torch import nn


def decoder_layers(model: "nn.Module") -> tuple[str, "nn.ModuleList"]:
    """The name and the ``ModuleList`` of the model's decoder blocks (the list as long as ``num_hidden_layers``)."""
    from torch import nn

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise LitFactoryError(f"finetuning: cannot find the {count} decoder layers of {type(model).__name__}")


class Finetuning:
    """Base class of the fine-tuning methods."""

    #: True when the trained weights are an adapter saved apart from the base model.
    saves_adapter: bool = False

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        """Mark what trains. ``train_embeddings``: new tokens were added, so embeddings and head must train too."""
        raise NotImplementedError


class Full(Finetuning):
    """Train every parameter."""

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        model.requires_grad_(True)
        return model


class Freeze(Finetuning):
    """Train only the last decoder layers (and optionally some named modules); freeze the rest.

    Args:
        trainable_layers: How many of the last decoder layers train.
        extra_modules: Names of further modules that train fully (e.g. ``embed_tokens``, ``lm_head``, ``norm``);
            matched against the last component(s) of module names.
    """

    def __init__(self, trainable_layers: int = 2, extra_modules: Optional[list[str]] = None) -> None:
        if trainable_layers < 1:
            raise LitFactoryError("finetuning.trainable_layers: must be at least 1")
        self.trainable_layers = trainable_layers
        self.extra_modules = list(extra_modules or [])

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        prefix, layers = decoder_layers(model)
        if self.trainable_layers > len(layers):
            raise LitFactoryError(
                f"finetuning.trainable_layers: {self.trainable_layers} is more than the model's {len(layers)} layers"
            )
        model.requires_grad_(False)
        for layer in list(layers)[-self.trainable_layers:]:
            layer.requires_grad_(True)
        extra = list(self.extra_modules)
        if train_embeddings:
            extra += [_module_name(model, model.get_input_embeddings()), _module_name(model, model.get_output_embeddings())]
        names = dict(model.named_modules())
        for wanted in extra:
            matches = [name for name in names if name == wanted or name.endswith("." + wanted)]
            if not matches:
                raise LitFactoryError(f"finetuning.extra_modules: the model has no module named {wanted!r}")
            for name in matches:
                names[name].requires_grad_(True)
        return model


def _module_name(model: "nn.Module", target: "nn.Module") -> str:
    return next(name for name, module in model.named_modules() if module is target)


class LoRA(Finetuning):
    """Low-rank adapters through PEFT.

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator: the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter input.
        target_modules: ``all`` for every linear layer except the output head, or a list of module names
            (e.g. ``[q_proj, v_proj]``) or a regular expression.
        modules_to_save: Modules trained fully and saved beside the adapter (e.g. ``[embed_tokens, lm_head]``).
    """

    saves_adapter = True

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Union[str, list[str]] = "all",
        modules_to_save: Optional[list[str]] = None,
    ) -> None:
        if r < 1:
            raise LitFactoryError("finetuning.r: the LoRA rank must be at least 1")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.modules_to_save = list(modules_to_save or [])

    def peft_config(self, model: "nn.Module", train_embeddings: bool = False):
        """The ``peft.LoraConfig`` this method applies to ``model``."""
        from peft import LoraConfig, TaskType

        # PEFT's "all-linear" already excludes the output head; we only translate our spelling.
        targets = "all-linear" if self.target_modules == "all" else self.target_modules
        if isinstance(targets, list):
            leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            missing = [t for t in targets if t not in leaf_names]
            if missing:
                raise LitFactoryError(f"finetuning.target_modules: the model has no modules named {missing}")
        elif targets != "all-linear":
            if not any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
                raise LitFactoryError(f"finetuning.target_modules: the pattern {targets!r} matches no module")
        to_save = list(self.modules_to_save)
        if train_embeddings:
            # New token rows are untrained: without training the embeddings and head they stay noise.
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                name = _module_name(model, module).rsplit(".", 1)[-1]
                if name not in to_save:
                    to_save.append(name)
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            modules_to_save=to_save or None,
        )

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, train_embeddings))
