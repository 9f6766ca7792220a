"""Batching: right-pad token lists into tensors.

Hand-written rather than transformers' DataCollatorForSeq2Seq: that one pads through ``tokenizer.pad``, which needs
a pad token set on the tokenizer object; a tokenizer without one would have to be changed. This needs only an id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lit_factory.data.tokenize import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids``/``labels`` to the longest example and builds ``attention_mask``.

    Args:
        pad_token_id: the id written on padding positions of ``input_ids``.
        pad_to_multiple_of: round the padded length up to a multiple of this (8 or 64 help tensor cores).
        label_pad_id: the label on padding positions (-100: no loss).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    label_pad_id: int = IGNORE_INDEX

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(features), length), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
            "labels": torch.full((len(features), length), self.label_pad_id, dtype=torch.long),
        }
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            # Pretraining blocks carry no labels column: every token is its own target.
            labels = feature.get("labels", ids)
            batch["input_ids"][row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            batch["attention_mask"][row, : len(ids)] = 1
            batch["labels"][row, : len(labels)] = torch.as_tensor(labels, dtype=torch.long)
        return batch
