"""Learning-rate schedules: linear warmup, then cosine, linear or no decay.

Written here instead of calling `transformers.get_scheduler` because importing `transformers.optimization` pulls in
`trainer_utils` -> peft -> bitsandbytes, 1.3 s of start-up for every run; the formulas are the same
(tests compare them with transformers').
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def warmup_then_decay(
    optimizer: torch.optim.Optimizer,
    schedule: Literal["cosine", "linear", "constant"],
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scale the learning rate linearly from 0 over ``warmup_steps``, then decay it to ``min_lr_ratio`` times the
    peak at ``total_steps`` (a floor on the cosine decay, transformers' ``cosine_with_min_lr``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return cosine * (1.0 - min_lr_ratio) + min_lr_ratio

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
