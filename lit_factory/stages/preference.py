"""What the preference stages share: per-sequence log-probabilities, the reference model, pairwise validation.

Log-probabilities come from the stage's ``loss_head`` (``lit_factory.stages.lm_head``). ``PreferenceStage`` logs a
stage's metrics and validates per pair; ``ReferenceStage`` adds the frozen reference policy DPO and KTO compare
against, in one of three forms (see its ``reference`` argument).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Literal, Optional

import torch
from lit_factory.data.objectives import Objective, Pairwise, objective_component
from lit_factory.errors import LitFactoryError
from lit_factory.model.modes import evaluating
from lit_factory.stages.base import Stage

Batch = dict[str, torch.Tensor]


def require_batch(batch: Batch, keys: tuple[str, ...], stage: str, objective: str | type[Objective]) -> None:
    """A clear error when a batch lacks what the stage needs (e.g. supervised data fed to DPO); ``objective``: the
    stage's data objective (a class of :mod:`lit_factory.data.objectives`, or its name)."""
    objective = objective_component(objective)
    missing = [key for key in keys if key not in batch]
    if missing:
        raise LitFactoryError(
            f"{stage}: the batch has no {missing}; the data module must prepare objective {objective.key!r} "
            f"(set data.init_args.objective: {objective}, which the CLI does from the stage)"
        )
    rows = objective.rows_per_example
    if batch["input_ids"].size(0) % rows:
        layout = ", then ".join(f"n {name}" for name in objective.sequence_names)
        raise LitFactoryError(f"{stage}: a {objective} batch needs {rows}n rows ({layout})")


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, compared: str = "rewards/") -> dict[str, torch.Tensor]:
    """The metrics of paired rewards (row i of ``chosen`` against row i of ``rejected``), as TRL names them: their
    means ``rewards/chosen`` and ``rewards/rejected``, how often chosen wins (``accuracy``) and by how much on average
    (``margin``), the last two under the prefix ``compared`` (the reward model logs them unprefixed)."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        f"{compared}accuracy": (chosen > rejected).float().mean(),
        f"{compared}margin": (chosen - rejected).mean(),
    }


class PreferenceStage(Stage):
    """Base of the stages trained on chosen/rejected (or desirable/undesirable) responses.

    Per-example (per-pair) losses are means over the batch's examples, averaged over the micro-batches and ranks of
    an optimizer step, as TRL does; token-level terms (NLL/SFT) go through ``Stage.token_mean``.
    Validation reports the mean loss per batch row group (``val/loss``) plus the stage's metrics; perplexity means
    nothing for these objectives and is not logged.
    """

    data_objective = Pairwise

    def policy_logps(self, batch: Batch, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities and token counts of the trained model on ``batch[prefix + 'input_ids']``."""
        return self.loss_head.sequence_logps(self.model, batch[prefix + "labels"], input_ids=batch[prefix + "input_ids"],
                                             attention_mask=batch[prefix + "attention_mask"])

    def log_metrics(self, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log ``metrics`` under ``train/`` or ``val/`` (a no-op outside a Trainer, e.g. when a test calls loss).

        Under data parallelism each value is averaged over the ranks (``sync_dist``), which with equal per-rank
        batches is the mean over the global batch; every rank must log the same names (see ``pooled_mean``).
        """
        if self._trainer is None:
            return
        split = "train" if self.training else "val"
        for name, value in metrics.items():
            self.log(f"{split}/{name}", value.detach().float(), batch_size=batch_size,
                     sync_dist=self.trainer.world_size > 1)

    def pooled_mean(self, values: torch.Tensor) -> Optional[torch.Tensor]:
        """The mean of ``values`` over every rank's elements (None when no rank has any): for metrics over a
        subset of rows whose size differs between ranks, such as KTO's desirable rows."""
        total = torch.stack([values.detach().float().sum(), torch.tensor(float(values.numel()), device=values.device)])
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return total[0] / total[1] if total[1] > 0 else None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        rows = batch["input_ids"].size(0) // self.data_objective.rows_per_example
        self.val_loss.update(self.loss(batch), weight=rows)

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()


class ReferenceStage(PreferenceStage):
    """A preference stage measured against the frozen starting policy.

    Args:
        reference: Where the reference log-probabilities come from. ``auto``: the same model with the adapter
            disabled when training a new LoRA adapter (no second copy), else ``copy``. ``copy``: a frozen copy of
            the starting model kept in memory. ``precomputed``: computed once for every training and validation row
            before the first step, then only a table of numbers is kept (full fine-tuning without a second copy).
        **kwargs: The ``Stage`` arguments (model, finetuning, optimizer, lr_schedule, warmup_steps).
    """

    #: Batch key prefixes whose rows need reference log-probabilities ("" = input_ids/attention_mask/labels).
    reference_prefixes: tuple[str, ...] = ("",)

    def __init__(self, reference: Literal["auto", "copy", "precomputed"] = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.reference_model: Optional[torch.nn.Module] = None
        self.precomputed_logps: dict[str, float] = {}

    @property
    def reference_source(self) -> str:
        """``adapter_disabled``, ``copy`` or ``precomputed``: what ``reference='auto'`` resolves to."""
        if self.reference != "auto":
            return self.reference
        fresh_adapter = self.finetuning is not None and self.finetuning.saves_adapter and self.model_args.adapter is None
        return "adapter_disabled" if fresh_adapter else "copy"

    def configure_model(self) -> None:
        super().configure_model()
        if self.reference_source == "copy" and self.reference_model is None:
            self.reference_model = copy.deepcopy(self.model).requires_grad_(False).eval()

    @torch.no_grad()
    def reference_logps(self, batch: Batch, prefix: str = "") -> torch.Tensor:
        """Summed log-probabilities of the reference policy on ``batch[prefix + 'input_ids']`` (no gradient)."""
        ids, mask, labels = (batch[prefix + key] for key in ("input_ids", "attention_mask", "labels"))
        source = self.reference_source
        if source == "precomputed" and self.precomputed_logps:
            try:
                values = [self.precomputed_logps[_row_key(i, m, l)] for i, m, l in zip(ids, mask, labels)]
            except KeyError:
                raise LitFactoryError(
                    "model.init_args.reference: precomputed: a row was not seen before training (data changed "
                    "after the start?). Fix: set model.init_args.reference: copy."
                ) from None
            return torch.tensor(values, device=ids.device)
        if source == "adapter_disabled":
            with self.model.disable_adapter(), evaluating(self.model):
                return self.loss_head.sequence_logps(self.model, labels, input_ids=ids, attention_mask=mask)[0]
        # copy: the frozen copy; precomputing: the model, which still holds its starting weights
        model = self.reference_model.eval() if source == "copy" else self.model
        return self.loss_head.sequence_logps(model, labels, input_ids=ids, attention_mask=mask)[0]

    def on_fit_start(self) -> None:
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if self.reference_source != "precomputed" or self.precomputed_logps:
            return  # a resumed run restores the table from its checkpoint
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise LitFactoryError("model.init_args.reference: precomputed needs the data as a data module. Fix: pass "
                                  "Trainer.fit(datamodule=...), or set model.init_args.reference: copy.")
        table: dict[str, float] = {}
        was_training = self.model.training
        self.model.eval()
        loaders = [datamodule.train_dataloader()]
        if is_overridden("val_dataloader", datamodule):
            loaders.append(datamodule.val_dataloader())
        for batch in (batch for loader in loaders if loader for batch in loader):
            batch = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            for prefix in self.reference_prefixes:
                logps = self.reference_logps(batch, prefix)
                rows = zip(batch[prefix + "input_ids"], batch[prefix + "attention_mask"], batch[prefix + "labels"])
                table.update({_row_key(*row): float(value) for row, value in zip(rows, logps)})
        self.model.train(was_training)
        self.precomputed_logps = table

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.precomputed_logps:
            checkpoint["reference_logps"] = dict(self.precomputed_logps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.precomputed_logps = dict(checkpoint.get("reference_logps", {}))


def _row_key(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> str:
    # Batches carry no example index and are shuffled, so a row is recognised by its tokens and loss mask.
    keep = attention_mask.bool()
    content = torch.cat([input_ids[keep], labels[keep]]).to("cpu", torch.int64).numpy().tobytes()
    return hashlib.sha1(content).hexdigest()
