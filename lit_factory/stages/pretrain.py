"""Pre-training (continued): next-token loss on every token of plain text packed into full-length blocks."""

import torch

from lit_factory.stages.base import Stage, causal_lm_loss


class PreTrain(Stage):
    """Causal language modelling on plain text; the data module packs documents into ``cutoff_len`` blocks."""

    data_objective = "pretrain"

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return causal_lm_loss(logits, batch["labels"])
