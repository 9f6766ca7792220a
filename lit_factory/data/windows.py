"""Training batches that know the loss-token count of their optimizer step.

Token-level losses divide by every loss token of the optimizer step: all micro-batches of the gradient-accumulation
window (and all ranks; the stage adds those up). The first micro-batch's backward runs before the later ones are
loaded, so the count has to be known ahead: ``StepWindowLoader`` reads a window's batches ahead, as transformers'
Trainer does in ``get_batch_samples``, and stamps each one with the window's count.

Why here and not in the stage: Lightning gives a step one batch and no look-ahead (its ``dataloader_iter`` mode
would end the epoch early once the look-ahead empties the iterator), and scaling the gradients after the window
cannot give the per-pair and per-token terms of one loss (DPO-ftx, ORPO) their different normalisers. A
``DataLoader`` subclass keeps Lightning's distributed-sampler injection working (it re-creates the loader with its
own arguments). It extends ``ResumableDataLoader``: checkpoints are taken right after optimizer steps, so a resumed
run restarts at a window boundary and its windows are those of the uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from lit_factory.data.sampling import ResumableDataLoader

#: Keys ``StepWindowLoader`` adds to each batch: the window's loss tokens on this rank, its length in micro-batches
#: and the batch's place in it.
WINDOW_TOKENS, WINDOW_BATCHES, WINDOW_POSITION = "window_loss_tokens", "window_batches", "window_position"


def loss_tokens(batch: dict[str, Any], chosen_only: bool = False) -> int:
    """Positions a causal-LM loss counts in ``batch``: labels other than -100 after the shift by one (transformers
    counts ``labels[..., 1:]`` the same way). ``chosen_only``: the first half of the rows (pairwise batches, whose
    NLL terms score the chosen responses)."""
    labels = batch["labels"]
    if chosen_only:
        labels = labels[: labels.size(0) // 2]
    return int((labels[:, 1:] != -100).sum())


class StepWindowLoader(ResumableDataLoader):
    """A ``DataLoader`` that yields its batches in windows of ``window`` (the trainer's ``accumulate_grad_batches``)
    and adds to each batch the window's loss-token count (``loss_tokens``), its length and the batch's position.

    With ``window=1`` the batches pass through unchanged. The last window of an epoch may be shorter; it is counted
    as it is. Windows start at the loader's first batch,
    which is where Lightning's accumulation windows start in every epoch.

    Args:
        window: Micro-batches per optimizer step.
        chosen_only: Count only the first half of each batch's rows (pairwise data).
        *args, **kwargs: The ``DataLoader`` arguments.
    """

    def __init__(self, *args: Any, window: int = 1, chosen_only: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = max(int(window), 1)
        self.chosen_only = chosen_only

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        batches = super().__iter__()
        if self.window == 1:  # one micro-batch per step: the stage counts it itself (Stage.token_mean)
            yield from batches
            return
        while True:
            ahead = []
            for batch in batches:
                ahead.append(batch)
                if len(ahead) == self.window:
                    break
            if not ahead:
                return
            count = torch.tensor(sum(loss_tokens(batch, self.chosen_only) for batch in ahead))
            for position, batch in enumerate(ahead):
                yield {**batch, WINDOW_TOKENS: count, WINDOW_BATCHES: len(ahead), WINDOW_POSITION: position}
