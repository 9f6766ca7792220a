"""Pre-training (continued): next-token loss on every token of plain text packed into full-length blocks."""

import torch

from lit_factory.data import objectives
from lit_factory.stages.base import Stage, count_label_tokens


class PreTrain(Stage):
    """Causal language modelling on plain text; the data module packs documents into ``cutoff_len`` blocks."""

    data_objective = objectives.PreTrain

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss_sum = self.loss_head.next_token_loss(self.model, batch["labels"], input_ids=batch["input_ids"],
                                                  attention_mask=batch["attention_mask"])
        # Summed, then divided by the optimizer step's loss tokens (all micro-batches and ranks): Stage.token_mean.
        return self.token_mean(loss_sum, count_label_tokens(batch["labels"]))
