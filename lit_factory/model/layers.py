"""Where a model keeps its decoder blocks: shared by the fine-tuning methods, ``lit-factory expand`` and BAdam, in a
module of its own so that none of them imports another for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from torch import nn


def decoder_layers(model: "nn.Module") -> tuple[str, "nn.ModuleList"]:
    """The name and the ``ModuleList`` of the model's decoder blocks (the list as long as ``num_hidden_layers``)."""
    from torch import nn

    from lit_factory.model.patches import VISION_MODULE_NAMES

    count = model.config.get_text_config().num_hidden_layers  # a VLM keeps it in its text config
    for name, module in model.named_modules():
        if set(name.split(".")) & set(VISION_MODULE_NAMES):  # a VLM's vision blocks are not decoder layers
            continue
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise LitFactoryError(
        f"model.init_args.finetuning: cannot find the {count} decoder layers of {type(model).__name__}. Fix: use LoRA "
        "or Full for this architecture."
    )
