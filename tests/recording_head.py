"""A loss head for the distributed tests (imported by `lit-factory fit` subprocesses): ``ChunkedLogits`` that writes
one line per chunked projection it runs, with the head weight the projection received, so a test can see that the
memory-lean path ran on every rank and with whole (gathered) weights, not FSDP shards."""

import os
from dataclasses import dataclass

import torch

from lit_factory.stages.lm_head import ChunkedLogits, LinearHead


class RecordingChunkedLogits(ChunkedLogits):
    """``ChunkedLogits`` recording each projection to ``<record_to>/rank<global rank>.txt`` as
    ``<weight type> <weight shape> <tokens projected>``."""

    def __init__(self, record_to: str, chunk_tokens: int = 256) -> None:
        super().__init__(chunk_tokens=chunk_tokens)
        self.record_to = record_to

    def _head(self, model: torch.nn.Module):
        head = super()._head(model)
        return None if head is None else _RecordedHead(head.module, head.logit_scale, head.softcap, self.record_to)


@dataclass
class _RecordedHead(LinearHead):
    record_to: str = ""

    def project(self, function, *tensors):
        def recorded(weight, *hooked):
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(os.path.join(self.record_to, f"rank{rank}.txt"), "a") as file:
                file.write(f"{type(weight).__name__} {'x'.join(map(str, weight.shape))} {hooked[0].shape[0]}\n")
            return function(weight, *hooked)

        return super().project(recorded, *tensors)
