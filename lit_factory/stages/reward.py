"""Reward model: a value head on the base model trained on pairwise preferences (Bradley-Terry)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lit_factory.data import objectives
from lit_factory.model.value_head import (
    ValueHead,
    last_hidden_states,
    last_token_values,
    save_value_head,
    value_head_set_aside,
)
from lit_factory.stages.preference import PreferenceStage, require_batch, reward_metrics


class RewardModel(PreferenceStage):
    """Scores a response by the value head's output at its last non-pad token; loss −log σ(s_chosen − s_rejected).

    Batches are pairwise (first n rows chosen, last n rejected). The output folder holds the adapter (or the model)
    and ``value_head.safetensors``; ``lit_factory.model.value_head.load_value_head`` reads the head back.

    Takes the ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps) and no others.
    """

    data_objective = objectives.Pairwise

    def configure_model(self) -> None:
        super().configure_model()
        if not hasattr(self.model, "value_head"):
            # Inside the model, the head trains, checkpoints and moves like any other trainable weight of it.
            device = next(self.model.parameters()).device
            self.model.add_module("value_head", ValueHead(self.model.config.hidden_size).to(device))

    @property
    def value_head(self) -> ValueHead:
        """The value head (built by ``configure_model``)."""
        return self.model.value_head

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One reward per row: the value at the row's last non-pad token."""
        values = self.value_head(last_hidden_states(self.model, input_ids, attention_mask))
        return last_token_values(values, attention_mask)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        require_batch(batch, ("input_ids", "attention_mask"), "RewardModel", self.data_objective)
        chosen, rejected = self.scores(batch["input_ids"], batch["attention_mask"]).chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()

        self.log_metrics(reward_metrics(chosen, rejected, compared=""), batch_size=len(chosen))
        return loss

    def write_outputs(self, folder: Path) -> None:
        """The adapter (or model) and tokenizer as ``Stage.write_outputs`` writes them, plus the value head."""
        with value_head_set_aside(self.model) as head:
            super().write_outputs(folder)
        save_value_head(head, folder)
