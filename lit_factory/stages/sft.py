"""Supervised fine-tuning: next-token loss on the assistant turns only (the data module masks the rest)."""

import torch

from lit_factory.data import media
from lit_factory.data.packing import attention_inputs
from lit_factory.stages.base import Stage, causal_lm_loss, count_label_tokens


class SFT(Stage):
    """Supervised fine-tuning on chat/instruction data; every assistant turn of a dialogue carries loss."""

    data_objective = "supervised"

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Packed rows: per-sequence attention; image-text rows: the images' pixels (lit_factory.data.media).
        logits = self(batch["input_ids"], **attention_inputs(batch), **media.model_inputs(batch)).logits
        # Summed, then divided by the optimizer step's loss tokens (all micro-batches and ranks): Stage.token_mean.
        return self.token_mean(causal_lm_loss(logits, batch["labels"], "sum"), count_label_tokens(batch["labels"]))
