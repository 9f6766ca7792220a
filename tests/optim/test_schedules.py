"""Our LR schedules against transformers' implementations of the same names."""

import pytest
import torch
from transformers import get_scheduler

from lit_factory.optim.schedules import warmup_then_decay


@pytest.mark.parametrize("ours, theirs", [("cosine", "cosine"), ("linear", "linear"),
                                          ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedule_matches_transformers(ours, theirs, warmup):
    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = make(optimizer)
        values = []
        for _ in range(40):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    expected = lrs(lambda opt: get_scheduler(theirs, opt, num_warmup_steps=warmup, num_training_steps=40))
    assert lrs(lambda opt: warmup_then_decay(opt, ours, warmup, 40)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_floor_matches_transformers_cosine_with_min_lr(warmup):
    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler, values = make(optimizer), []
        for _ in range(40):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    expected = lrs(lambda opt: get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=warmup,
                                             num_training_steps=40, scheduler_specific_kwargs={"min_lr_rate": 0.1}))
    assert min(expected[warmup + 1:]) > 0.04  # the floor is there: 0.1 * 0.5
    assert lrs(lambda opt: warmup_then_decay(opt, "cosine", warmup, 40, min_lr_ratio=0.1)) == pytest.approx(expected, abs=1e-12)
