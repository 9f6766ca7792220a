"""Training batches that a resumed run continues exactly: the order is a function of (seed, epoch) and the loader
remembers how far into the epoch it got.

Written here because torchdata's ``StatefulDataLoader`` is an extra dependency we do not require; Lightning's fit
loop saves and restores any train loader that has ``state_dict``/``load_state_dict`` (it calls ``load_state_dict``
before it iterates), and calls ``set_epoch`` on the sampler at every epoch start.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler


class _Skipping:
    """Sampler part shared by both orders: drop the first ``skip`` indices of the next pass (a resumed epoch)."""

    skip: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _resumed(self, order: list[int]) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


class EpochShuffleSampler(_Skipping, RandomSampler):
    """A fresh random order each epoch, drawn from ``seed + epoch`` (as ``DistributedSampler`` does), so no
    generator state has to survive a restart. A ``RandomSampler`` so that Lightning keeps shuffling under DDP."""

    def __init__(self, data_source: Any, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return self._resumed(torch.randperm(len(self.data_source), generator=generator).tolist())


class ResumableSequentialSampler(_Skipping, SequentialSampler):
    """The dataset in order (``shuffle: false``), able to start a pass part-way."""

    def __iter__(self) -> Iterator[int]:
        return self._resumed(list(range(len(self.data_source))))


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose state is (epoch, batches handed out this epoch).

    On ``load_state_dict`` the next pass starts after the batches the checkpointed run had consumed: by skipping
    indices in our samplers (nothing is loaded), or, with a sampler Lightning swapped in (``DistributedSampler``
    under DDP), by drawing and dropping those batches. Counting the batches this loader yields is exact for sized
    datasets: Lightning prefetches only from loaders without a length.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_at = self._resume_at, 0
        sampler = self.sampler if self.batch_sampler is None else getattr(self.batch_sampler, "sampler", None)
        skips_indices = isinstance(sampler, _Skipping) and self.batch_size is not None
        if skips_indices:
            sampler.skip = skip * self.batch_size
        iterator = super().__iter__()
        if not skips_indices:
            for _ in range(skip):
                next(iterator, None)
        self._yielded = skip
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._yielded += 1
            yield batch

    def _sampler_with_epoch(self) -> Any:
        for candidate in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(candidate, "set_epoch"):
                return candidate
        return None

    def state_dict(self) -> dict[str, int]:
        sampler = self._sampler_with_epoch()
        return {"epoch": int(getattr(sampler, "epoch", 0)), "batches_yielded": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # With workers, the first pass is started before Lightning's set_epoch call: set the epoch here too.
        epoch, consumed = state["epoch"], state["batches_yielded"]
        try:
            batches = len(self)
        except TypeError:  # a stream has no length: it restarts at its beginning (see the README)
            return
        if consumed >= batches:  # saved after the epoch's last batch: Lightning goes on with the next epoch
            epoch, consumed = epoch + 1, 0
        sampler = self._sampler_with_epoch()
        if sampler is not None:
            sampler.set_epoch(epoch)
        self._resume_at = consumed
