"""Token-level losses normalise over the whole optimizer step (transformers' ``num_items_in_batch`` rule): checked
against hand-written loops that sum the token losses of a gradient-accumulation window and divide by its count."""

import copy
import json
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lit_factory.data.datamodule import DataModule
from lit_factory.model import ModelArgs
from lit_factory.stages import DPO, ORPO, SFT
from tiny_models import SPARROW, TINY, quiet_trainer

ACCUMULATE, STEPS, LR = 2, 3, 0.2


def uneven_data(directory, tokenizer, pairwise=False, **overrides) -> DataModule:
    """Micro-batches (batch size 1) that alternate a two-word reply with a long one: very different token counts."""
    long_reply = " ".join(f"word{i}" for i in range(60))
    rows = []
    for i in range(2 * ACCUMULATE * STEPS):
        short, long = f"ok {i}", f"{long_reply} {i}"
        if pairwise:
            chosen, rejected = (short, long) if i % 2 else (long, short)
            rows.append({"instruction": f"question {i}?", "chosen": chosen, "rejected": rejected})
        else:
            rows.append({"instruction": f"question {i}?", "output": short if i % 2 else long})
    (directory / "uneven.json").write_text(json.dumps(rows))
    info = {"uneven": {"file_name": "uneven.json"}}
    if pairwise:
        info["uneven"].update(ranking=True, columns={"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"})
    (directory / "dataset_info.json").write_text(json.dumps(info))
    options = dict(dataset="uneven", dataset_dir=str(directory), tokenizer=tokenizer, template="chatml",
                   cutoff_len=160, batch_size=1, shuffle=False)
    options.update(overrides)
    return DataModule(**options)


class StepLosses(pl.Callback):
    """The logged train/loss of every optimizer step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.losses.append(float(trainer.callback_metrics["train/loss"]))


def fit_with_accumulation(stage, data, tmp_path):
    torch.manual_seed(0)
    stage.configure_model()
    start = copy.deepcopy(stage.model)
    recorder = StepLosses()
    quiet_trainer(tmp_path, STEPS, accumulate_grad_batches=ACCUMULATE, callbacks=[recorder]).fit(stage, datamodule=data)
    data.setup("fit")
    windows = [list(window) for window in zip(*[iter(data.train_dataloader())] * ACCUMULATE)][:STEPS]
    return start, windows, recorder.losses


def token_loss(model, rows):
    """Summed next-token cross-entropy of ``rows`` and its token count, written out plainly."""
    logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    targets = rows["labels"][:, 1:]
    summed = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1),
                             ignore_index=-100, reduction="sum")
    return summed, int((targets != -100).sum())


def assert_same_parameters(ours, reference):
    # rtol: the stages project with ChunkedLogits, the loops below with full logits (float32 sums in other orders)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_sft_with_accumulation_matches_a_loop_over_the_windows_tokens(tmp_path):
    stage = SFT(ModelArgs(config=dict(TINY), tokenizer=SPARROW), optimizer=partial(torch.optim.SGD, lr=LR),
                lr_schedule="constant")
    data = uneven_data(tmp_path, stage.tokenizer)
    model, windows, logged = fit_with_accumulation(stage, data, tmp_path)

    start = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    expected_losses, counts = [], []
    for window in windows:
        parts = [token_loss(model, batch) for batch in window]
        tokens = sum(count for _, count in parts)
        loss = sum(summed for summed, _ in parts) / tokens
        counts.append([count for _, count in parts])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected_losses.append(loss.item())

    assert all(max(pair) > 10 * min(pair) for pair in counts)  # the windows really are uneven
    assert_same_parameters(stage.model, model)
    assert logged == pytest.approx(expected_losses, rel=1e-5, abs=1e-5)

    # The windows are uneven enough that the old rule (mean of the micro-batch means) trains another model.
    optimizer = torch.optim.SGD(start.parameters(), lr=LR)
    for window in windows:
        optimizer.zero_grad()
        sum(summed / count for summed, count in (token_loss(start, batch) for batch in window)).div(ACCUMULATE).backward()
        optimizer.step()
    difference = max((a - b).abs().max().item() for a, b in zip(stage.model.parameters(), start.parameters()))
    assert difference > 1e-3


@pytest.mark.parametrize("stage_class, options", [(ORPO, dict(beta=0.3)), (DPO, dict(sft_weight=0.7, beta=0.2))])
def test_preference_nll_term_normalises_over_the_step(stage_class, options, tmp_path):
    stage = stage_class(model=ModelArgs(config=dict(TINY), tokenizer=SPARROW),
                        optimizer=partial(torch.optim.SGD, lr=LR), lr_schedule="constant", **options)
    data = uneven_data(tmp_path, stage.tokenizer, pairwise=True, objective="pairwise")
    model, windows, logged = fit_with_accumulation(stage, data, tmp_path)
    reference = copy.deepcopy(model).requires_grad_(False)  # DPO's reference: the starting policy

    def pair_terms(batch):
        """Per-pair loss of the batch (a mean over its pairs) and the chosen rows' summed NLL and token count."""
        targets = batch["labels"][:, 1:]

        def summed_logps(policy):
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            return -F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                                    reduction="none").view(targets.shape).sum(-1)

        logps, counts = summed_logps(model), (targets != -100).sum(-1)
        if stage_class is ORPO:
            mean_logps = logps / counts
            chosen, rejected = mean_logps.chunk(2)
            log_odds = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
            pair_loss = options["beta"] * -F.logsigmoid(log_odds).mean()
        else:
            with torch.no_grad():
                reference_logps = summed_logps(reference)
            ratios = logps - reference_logps
            chosen, rejected = ratios.chunk(2)
            pair_loss = -F.logsigmoid(options["beta"] * (chosen - rejected)).mean()
        weight = options.get("sft_weight", 1.0)
        return pair_loss, weight * -logps.chunk(2)[0].sum(), int(counts.chunk(2)[0].sum())

    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    expected_losses = []
    for window in windows:
        parts = [pair_terms(batch) for batch in window]
        tokens = sum(count for *_, count in parts)
        # Per-pair terms: a mean over the window's micro-batches; NLL: over the window's chosen tokens.
        loss = sum(pair for pair, *_ in parts) / len(parts) + sum(nll for _, nll, _ in parts) / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        expected_losses.append(loss.item())

    assert_same_parameters(stage.model, model)
    assert logged == pytest.approx(expected_losses, rel=1e-5, abs=1e-5)
