"""Dynamic Fine-Tuning (Wu et al., 2025, arXiv 2508.05629): SFT whose token losses are weighted by the model's own
(detached) probability of the target token, ``-sg(p) * log p`` — LLaMA-Factory's ``use_dft_loss``."""

import torch
import torch.nn.functional as F

from lit_factory.data.packing import attention_inputs
from lit_factory.stages.base import count_label_tokens
from lit_factory.stages.sft import SFT


def dft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sum over next-token positions whose label is not -100 of ``-sg(p_t) * log p_t`` (float32).

    ``p_t = exp(-cross_entropy)`` is the probability of the target token; stopping its gradient makes the
    gradient that of a cross-entropy rescaled per token by ``p_t``, the paper's correction of SFT's implicit
    ``1 / p_t`` reward weighting. Ignored positions have zero cross-entropy, so they add nothing.
    """
    next_tokens = F.pad(labels, (0, 1), value=-100)[:, 1:]
    token_losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), next_tokens.reshape(-1),
                                   ignore_index=-100, reduction="none")
    return (token_losses * torch.exp(-token_losses).detach()).sum()


class DFT(SFT):
    """SFT with the DFT token weighting; data, masks and normalisation (the optimizer step's token mean) as SFT."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch["input_ids"], **attention_inputs(batch)).logits
        # As SFT.loss, with dft_loss_sum for the summed cross-entropy. Full logits (the plain path): the loss head's
        # chunked next-token loss has no per-token weighting.
        return self.token_mean(dft_loss_sum(logits, batch["labels"]), count_label_tokens(batch["labels"]))
