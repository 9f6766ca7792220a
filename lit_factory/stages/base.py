"""What every stage shares: the model builder, optimizer, LR schedule, logging and saving.

A stage subclass defines ``loss(batch)`` — the whole training objective in one method — and, when its data is not
supervised chat data, the ``data_objective`` the data module should prepare (a class of
:mod:`lit_factory.data.objectives`).
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import torch
from torchmetrics import MeanMetric

from lit_factory.data.objectives import Objective, Supervised
from lit_factory.errors import LitFactoryError
from lit_factory.model.adapters import Finetuning
from lit_factory.infer.engine import GenerationArgs
from lit_factory.model.builder import ModelArgs, build_inference_model, build_media, build_model, build_tokenizer
from lit_factory.optim.factory import OptimizerCallable, OptimizerFactory
from lit_factory.stages.lm_head import ChunkedLogits, FullLogits

Optimizer = OptimizerCallable


def count_label_tokens(labels: torch.Tensor) -> int:
    """How many positions a causal LM loss averages over (labels shift by one)."""
    return int((labels[:, 1:] != -100).sum())


def stage_arguments(frame: Any) -> dict[str, Any]:
    """Every argument the stage was made with: those of each ``__init__`` of its class chain, read from the frames of
    the calls (Lightning's own ``save_hyperparameters()`` mechanism), so a subclass's arguments — a user's too — are
    recorded without a line of its own."""
    from lightning.pytorch.core.mixins import HyperparametersMixin
    from lightning.pytorch.utilities.parsing import collect_init_args

    arguments: dict[str, Any] = {}
    for local_arguments in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
        arguments.update(local_arguments)
    return arguments


def plain_hyperparameters(value: Any, depth: int = 0) -> Any:
    """``value`` as plain values for the checkpoint's ``hyper_parameters`` and ``hparams.yaml``: checkpoints load
    with ``torch.load(weights_only=True)``, which refuses our classes. A component becomes its ``class_path`` and
    ``init_args`` (its public attributes), as a recipe names it; a dataclass its fields."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 8:  # a component that refers back to itself
        return repr(value)
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else repr(value)
    if isinstance(value, (list, tuple)):
        return [plain_hyperparameters(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {str(key): plain_hyperparameters(item, depth + 1) for key, item in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain_hyperparameters(getattr(value, field.name), depth + 1) for field in fields(value)}
    if isinstance(value, functools.partial):  # what jsonargparse makes of `optimizer: {class_path, init_args}`
        classes = [arg for arg in value.args if isinstance(arg, type)]
        return {"class_path": _class_path(classes[-1] if classes else value.func),
                "init_args": plain_hyperparameters(value.keywords, depth + 1)}
    if isinstance(value, type) or inspect.isroutine(value):
        return {"class_path": _class_path(value)}
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    if hasattr(value, "__dict__"):
        public = {name: item for name, item in vars(value).items() if not name.startswith("_")}
        return {"class_path": _class_path(type(value)), "init_args": plain_hyperparameters(public, depth + 1)}
    return repr(value)


def _class_path(target: Any) -> str:
    return f"{target.__module__}.{target.__qualname__}"


@dataclass
class _StepWindow:
    """The optimizer step being accumulated: its loss tokens over all ranks and what has run of it so far."""

    tokens: Optional[torch.Tensor] = None  # every rank's loss tokens of the window (None: not announced)
    batches: int = 1  # micro-batches in the window
    local_tokens: int = 0  # this rank's loss tokens of the window, as the data announced them
    seen_batches: int = 0
    seen_tokens: int = 0  # this rank's loss tokens the stage's token terms counted so far
    has_token_terms: bool = False
    objective: Optional[torch.Tensor] = None  # this rank's share of the step's loss, as backpropagated


class Stage(pl.LightningModule):
    """Base of all stages.

    Args:
        model: The base model (path or inline config), its tokenizer, dtype, attention and checkpointing options.
        finetuning: Which parameters train: ``lit_factory.model.Full`` (default when unset), ``Freeze``, ``LoRA``.
        optimizer: Optimizer class path and its arguments, called with the trainable parameters
            (default: ``torch.optim.AdamW`` with its defaults; recipes set the learning rate), e.g.
            ``bitsandbytes.optim.AdamW8bit``; or an optimizer factory that needs the model:
            ``lit_factory.optim.LoRAPlus``, ``GaLore``, ``BAdam``.
        lr_schedule: Learning-rate decay after warmup: ``cosine`` (to 0), ``linear`` (to 0) or ``constant``.
        warmup_steps: Linear warmup length: a step count, or a fraction of the total steps when below 1.
        min_lr_ratio: ``cosine`` only: decay to this fraction of the peak learning rate instead of 0
            (transformers' ``cosine_with_min_lr`` with ``min_lr_rate``).
        generation: Decoding settings of ``lit-factory predict`` (max_new_tokens, temperature, top_p, ...).
        loss_head: How the losses project hidden states onto the vocabulary (``lit_factory.stages.lm_head``):
            ``ChunkedLogits`` (default when unset: labelled tokens only, a chunk at a time, Liger's fused kernel
            on CUDA when installed) or ``FullLogits`` (the model's own full-vocabulary logits). Same results.
    """

    #: What the data module must prepare for this stage, an objective class (linked into the data module by the CLI).
    data_objective: ClassVar[type[Objective]] = Supervised

    def __init__(
        self,
        model: ModelArgs,
        finetuning: Optional[Finetuning] = None,
        optimizer: Union[OptimizerFactory, Optimizer] = torch.optim.AdamW,
        lr_schedule: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_steps: float = 0,
        min_lr_ratio: float = 0.0,
        generation: Optional[GenerationArgs] = None,
        loss_head: Optional[FullLogits] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(plain_hyperparameters(stage_arguments(inspect.currentframe())))
        self.model_args = model
        self.finetuning = finetuning
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        if not 0 <= min_lr_ratio <= 1 or (min_lr_ratio and lr_schedule != "cosine"):
            raise LitFactoryError(
                f"model.init_args.min_lr_ratio: {min_lr_ratio} with lr_schedule {lr_schedule!r}. Fix: give a value in "
                "[0, 1] with model.init_args.lr_schedule: cosine (or min_lr_ratio: 0)."
            )
        self.min_lr_ratio = min_lr_ratio
        self.generation = generation or GenerationArgs()
        self.loss_head = loss_head if loss_head is not None else ChunkedLogits()
        self.tokenizer = build_tokenizer(model)
        self.media = build_media(model, self.tokenizer)  # a VLM's image plugin (the data module's too), else None
        self.model: Optional[torch.nn.Module] = None
        self.val_loss = MeanMetric()
        self._step_started: Optional[float] = None
        self._window = _StepWindow()
        self._in_training_step = False
        self.saved_output: Optional[tuple[str, Path]] = None  # ("model" or "adapter", folder) once on_train_end saved
        # Adapter runs checkpoint only what trains; the frozen base is rebuilt from `model.path` on resume.
        self.strict_loading = not self._checkpoints_trainable_only

    @property
    def _checkpoints_trainable_only(self) -> bool:
        from lit_factory.model.adapters import Full

        trains_everything = self.finetuning is None or isinstance(self.finetuning, Full)
        return self.model_args.path is not None and not trains_everything

    # ---- model -------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the model once, on the device the trainer chose (delayed init for large models)."""
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        if self._trainer is not None and self.trainer.predicting:  # base + adapter as saved, nothing trainable
            self.model = build_inference_model(self.model_args, self.tokenizer, device)
            return
        # A sharding strategy may have only rank 0 read the weights (lit_factory.distributed.FSDP): the others build
        # the model on the meta device and receive them when it is sharded.
        builds_empty = getattr(self.trainer.strategy, "builds_empty_model", None) if self._trainer is not None else None
        empty = bool(builds_empty and builds_empty())
        self.model = build_model(self.model_args, self.tokenizer, self.finetuning, device, empty_weights=empty)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs: Any):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training objective of the stage on one batch. Override this in a subclass to change it.

        Token-level terms go through ``token_mean``; terms that are already means over the batch's examples (the
        per-pair preference losses) are returned as they are and averaged over the step's micro-batches and ranks.
        """
        raise NotImplementedError

    def token_mean(self, token_sum: torch.Tensor, tokens: Union[int, torch.Tensor]) -> torch.Tensor:
        """A summed token-level loss (``tokens`` positions of this batch) as a mean over the optimizer step.

        In a training step this is transformers' ``num_items_in_batch`` rule (>= 4.46): divide by the loss tokens of
        the whole optimizer step, every micro-batch of the accumulation window on every rank, so each token weighs
        the same however the micro-batches differ in length; multiply by the world size because data-parallel
        strategies average gradients over ranks (transformers' ``average_tokens_across_devices``). Elsewhere
        (validation, a direct call) it is the mean over this batch's tokens.
        """
        tokens = int(tokens)
        if not self._in_training_step:
            return token_sum / max(tokens, 1)
        window = self._window
        window.seen_tokens += tokens
        window.has_token_terms = True
        if window.tokens is None:
            if self.trainer.accumulate_grad_batches > 1:
                raise LitFactoryError(
                    "trainer.accumulate_grad_batches > 1 needs training batches that carry their step's loss-token "
                    "count. Fix: train with lit_factory's DataModule, or wrap your DataLoader in "
                    "lit_factory.data.windows.StepWindowLoader."
                )
            # One micro-batch per step: its count over the ranks is the step's count.
            all_tokens = self.trainer.strategy.reduce(torch.tensor(tokens, device=self.device), reduce_op="sum")
        else:
            all_tokens = window.tokens
        return token_sum * (self.trainer.world_size * window.batches / all_tokens.clamp(min=1))

    # ---- loops -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        accumulate = self.trainer.accumulate_grad_batches
        self._enter_window(batch, batch_idx)
        self._in_training_step = True
        try:
            loss = self.loss(batch)
        finally:
            self._in_training_step = False
        window = self._window
        window.seen_batches += 1
        counted_otherwise = window.has_token_terms and window.seen_tokens != window.local_tokens
        if window.tokens is not None and window.seen_batches == window.batches and counted_otherwise:
            raise LitFactoryError(
                f"{type(self).__name__}: the losses counted {window.seen_tokens} loss tokens in this step where the "
                f"data announced {window.local_tokens}. Fix: make the stage's token terms count what "
                "lit_factory.data.windows.loss_tokens counts."
            )
        # Lightning divides every micro-batch's loss by accumulate_grad_batches; a short last window has fewer
        # micro-batches, so its per-example terms are rescaled to a mean over the micro-batches it really has
        # (transformers' current_gradient_accumulation_steps); token_mean already scaled its terms by `batches`.
        loss = loss * (accumulate / window.batches)
        share = loss.detach() / accumulate
        window.objective = share if window.objective is None else window.objective + share
        if self._loggers_write_this_step():
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        self._log_throughput(batch)
        return loss

    def _loggers_write_this_step(self) -> bool:
        """Whether Lightning writes this optimizer step's values to the loggers (every ``log_every_n_steps``).
        Values only the loggers read are logged only then: each ``self.log`` costs Lightning about a millisecond of
        bookkeeping, per micro-batch (``train/loss`` is logged every step: callbacks may read it)."""
        every = self.trainer.log_every_n_steps
        return every > 0 and ((self.trainer.global_step + 1) % every == 0 or self.trainer.should_stop)

    def _enter_window(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Start a new ``_StepWindow`` at the first micro-batch of an optimizer step (all ranks add up its count)."""
        from lit_factory.data.windows import WINDOW_BATCHES, WINDOW_POSITION, WINDOW_TOKENS

        accumulate = self.trainer.accumulate_grad_batches
        if WINDOW_POSITION not in batch:  # a plain loader: Lightning's windows, no announced token count
            if batch_idx % accumulate == 0:
                self._window = _StepWindow(batches=accumulate)
            return
        position = batch[WINDOW_POSITION]
        if position != batch_idx % accumulate or batch[WINDOW_BATCHES] > accumulate:
            raise LitFactoryError(
                f"training batch {batch_idx}: its step window (position {position} of {batch[WINDOW_BATCHES]}) "
                f"does not line up with trainer.accumulate_grad_batches={accumulate}. Fix: build the loader with "
                "window=accumulate_grad_batches."
            )
        if position == 0:
            self._window = _StepWindow()
            local = batch[WINDOW_TOKENS]
            # clone: the DDP reduce works in place, and `local` stays this rank's count
            self._window.tokens = self.trainer.strategy.reduce(local.to(self.device).clone(), reduce_op="sum")
            self._window.local_tokens, self._window.batches = int(local), int(batch[WINDOW_BATCHES])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # train/loss is the loss of the optimizer step: over its micro-batches, averaged over the ranks (which for
        # token-level losses is the token mean of the whole step).
        window = self._window
        if window.objective is None:  # a stage with its own optimisation loop (PPO) logs its own losses
            return
        if window.tokens is not None and window.seen_batches < window.batches:
            rank_zero_warn(
                f"an optimizer step ran {window.seen_batches} of its window's {window.batches} micro-batches "
                "(limit_train_batches not a multiple of accumulate_grad_batches?): its tokens weigh a little less"
            )
        self.log("train/loss", window.objective, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        window.objective = None

    def _log_throughput(self, batch: dict[str, torch.Tensor]) -> None:
        # Time from one step's start to the next covers data loading, forward, backward and optimizer together.
        # Not Lightning's ThroughputMonitor: it logs fixed names (`train/device/items_per_sec`, plus `train/time`,
        # `train/batches`, `train/samples`, `train/lengths`), not the documented `train/tokens_per_sec`, reports
        # nothing until a window of `window_size` batches is full, calls torch.cuda.synchronize() after every
        # micro-batch, and is a callback a plain `Trainer(...)` of the Python API would not have.
        now = time.perf_counter()
        if self._step_started is not None and self._loggers_write_this_step():
            tokens = int(batch["attention_mask"].sum()) * self.trainer.world_size
            self.log("train/tokens_per_sec", tokens / max(now - self._step_started, 1e-9))
        self._step_started = now

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_loss.update(self.loss(batch), weight=count_label_tokens(batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss.clamp(max=50)))

    def on_predict_start(self) -> None:
        self._predictions: list[dict[str, Any]] = []
        self._predict_started = time.perf_counter()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Generate replies for left-padded prompts (``DataModule.predict_dataloader``) with the data's template
        stop words; the rows are written at the end of the loop (see ``lit_factory.infer.predict``)."""
        from lit_factory.infer.predict import predict_batch

        template = getattr(self.trainer.datamodule, "template", None)
        stop_words = tuple(template.stop_words) if template is not None else ()
        rows = predict_batch(self.model, self.tokenizer, batch, self.generation, stop_words)
        self._predictions.extend(rows)
        return rows

    def on_predict_end(self) -> None:
        from lit_factory.infer.predict import write_predictions

        rows, seconds = self._predictions, time.perf_counter() - self._predict_started
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if self.trainer.is_global_zero:
            directory = self.output_dir()
            metrics = write_predictions(rows, directory, seconds, self.generation)
            rank_zero_info(f"Wrote {len(rows)} predictions and their metrics (BLEU-4 {metrics['bleu-4']:.2f}, "
                           f"ROUGE-L {metrics['rouge-l']:.2f}) to {directory}")

    def on_train_start(self) -> None:
        # `from_pretrained` returns a model in eval mode and Lightning 2.6 keeps each module's mode, so without this
        # dropout (LoRA's too) stays off and transformers skips gradient checkpointing (it checks `self.training`).
        # Lightning's validation loop switches to eval and back; frozen companions (reference and reward models)
        # live outside `self.model` and stay in eval.
        self.model.train()

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        from lit_factory.optim.factory import build_optimizer
        from lit_factory.optim.schedules import warmup_then_decay

        optimizer = build_optimizer(self.optimizer_factory, self.model)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_steps * total) if 0 < self.warmup_steps < 1 else int(self.warmup_steps)
        scheduler = warmup_then_decay(optimizer, self.lr_schedule, warmup, total, self.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints and outputs -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._checkpoints_trainable_only:
            trainable = {"model." + n for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_train_end(self) -> None:
        from lit_factory.distributed.gathering import whole_weights

        with whole_weights(self.trainer.strategy, self.model):  # every rank takes part in gathering sharded weights
            if self.trainer.is_global_zero:
                saved = self.save_pretrained(self.output_dir())
                kind = "adapter" if self.finetuning is not None and self.finetuning.saves_adapter else "model"
                self.saved_output = (kind, saved)  # for the summary the terminal prints (lit_factory.callbacks)
                rank_zero_info(f"Saved the trained {kind} and tokenizer (Hugging Face format) to {saved}")

    def output_dir(self) -> Path:
        """Where a run's outputs go: the first logger's run folder, else ``Trainer.default_root_dir`` — unless that
        folder is the current directory or holds files lit-factory did not write: then a fresh ``<it>/runs/version_<n>``
        (logged), so a user's files are never mixed with or replaced by ours.

        Reads the logger directly instead of ``Trainer.log_dir``, which broadcasts: callers run on rank 0 only.
        """
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        from lit_factory.stages.run_folder import choose_output_folder

        logger = self.trainer.loggers[0] if self.trainer.loggers else None
        folder = (logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else
                  getattr(logger, "save_dir", None)) if logger is not None else None
        chosen, reason = choose_output_folder(Path(folder or self.trainer.default_root_dir))
        if reason is not None:
            rank_zero_info(f"Outputs go to {chosen}: {reason}")
        return chosen

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter (PEFT format) or the whole model (safetensors), plus the tokenizer, to ``directory``.

        Files are written to a temporary folder first and moved into place one by one, so an interrupted save
        never leaves a half-written file where a good one was. A file an earlier save did not write is never
        replaced (``lit_factory.stages.run_folder``): the save then fails before anything moves.
        """
        from lit_factory.io import write_entries_atomically
        from lit_factory.stages.run_folder import check_replaceable, write_manifest

        directory = Path(directory)

        def before_move(staging: Path) -> None:
            check_replaceable(directory, [item.name for item in staging.iterdir()])
            write_manifest(staging, directory)

        return write_entries_atomically(directory, self.write_outputs, before_move)

    def write_outputs(self, folder: Path) -> None:
        """Write what a run leaves behind into ``folder`` (a staging folder); stages with more to save extend it."""
        from lit_factory.model.adapters import Full

        (self.finetuning or Full()).save(self.model, folder)
        self.tokenizer.save_pretrained(folder)
        if self.media is not None:  # preprocessor_config.json: the saved folder loads as a VLM `model.path`
            self.media.image_processor.save_pretrained(folder)

