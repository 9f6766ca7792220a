"""Supervised fine-tuning: next-token loss on the assistant turns only (the data module masks the rest)."""

import torch

from lit_factory.data import media, objectives
from lit_factory.data.packing import attention_inputs
from lit_factory.stages.base import Stage, count_label_tokens


class SFT(Stage):
    """Supervised fine-tuning on chat/instruction data; every assistant turn of a dialogue carries loss."""

    data_objective = objectives.Supervised

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Packed rows: per-sequence attention (attention_inputs); image-text rows: the images' pixels
        # (lit_factory.data.media). Summed, then divided by the optimizer step's loss tokens (all micro-batches and
        # ranks): Stage.token_mean.
        loss_sum = self.loss_head.next_token_loss(self.model, batch["labels"], input_ids=batch["input_ids"],
                                                  **attention_inputs(batch), **media.model_inputs(batch))
        return self.token_mean(loss_sum, count_label_tokens(batch["labels"]))
