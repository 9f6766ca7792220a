"""The data module: named datasets from a ``dataset_info.json`` -> padded batches in the format of a stage's objective.

Each dataset is prepared by :mod:`lit_factory.data.pipeline` (read, align, tokenise, pack; cached on disk), the
datasets are mixed (concatenated in order, or interleaved with probabilities), then split into train and validation
with ``seed``. The collator follows the objective (:mod:`lit_factory.data.objectives`; see
:mod:`lit_factory.data.collators` for the batch formats).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import lightning.pytorch as pl

from lit_factory.data.collators import PromptCollator
from lit_factory.data.objectives import Objective, Prompt, objective_component
from lit_factory.data.pipeline import Preprocessing, mix_datasets, prepare_dataset
from lit_factory.data.spec import get_dataset_spec
from lit_factory.data.templates import AnyTemplate, get_template
from lit_factory.errors import LitFactoryError
from lit_factory.shipped import resolve_shipped_path

if TYPE_CHECKING:
    from datasets import Dataset
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class DataModule(pl.LightningDataModule):
    """Fine-tuning data from LLaMA-Factory style ``dataset_info.json`` entries.

    Args:
        dataset: entry names in ``<dataset_dir>/dataset_info.json``, as a list or comma-separated.
        dataset_dir: the folder holding ``dataset_info.json`` (file names in it are relative to this folder).
        tokenizer: a tokenizer folder or hub id, or a loaded tokenizer (the CLI passes the stage's own). It is not
            modified: without a pad token, batches are padded with the eos id.
        objective: what the stage trains on (the CLI sets it from the stage's ``data_objective``): an objective of
            :mod:`lit_factory.data.objectives` by name or class: ``supervised`` (assistant replies of
            conversations), ``pretrain`` (plain text packed into blocks of ``cutoff_len``), ``pairwise`` (ranking
            data: n chosen then n rejected rows), ``kto`` (rows with a desirable flag, plus mismatched pairs),
            ``prompt`` (left-padded prompts only, for PPO and generation); or an ``Objective`` subclass of your own.
        template: chat template name (a file in ``templates/``) or a path to a template YAML; ``auto`` picks one
            from the tokenizer; ``tokenizer`` uses the tokenizer's own jinja chat template. Unused by ``pretrain``.
        enable_thinking: (reasoning templates: qwen3, deepseekr1, ...) null keeps the template's own setting (they
            think); false drops the replies' thoughts and ends each prompt with the empty thought block, as
            Qwen3's ``enable_thinking=False`` (see :mod:`lit_factory.data.template_format`). Other templates ignore it.
        cutoff_len: most tokens per example (supervised, preference), exact tokens per block (pretrain), most
            tokens per packed row (packing).
        batch_size: training examples per batch (pairwise: pairs, so 2x rows).
        eval_batch_size: validation examples per batch; defaults to ``batch_size``.
        val_size: held-out validation examples: a count if >= 1, a fraction of the data if in (0, 1), none if 0
            (streaming: a count only, taken from the start of the stream).
        max_samples: keep only the first this many rows of each dataset (quick runs, debugging).
        train_on_prompt: put the loss on prompts too, not only on the replies.
        mask_history: put the loss on the last reply of each conversation only (the last exchange is fitted into
            ``cutoff_len`` first, as in LLaMA-Factory).
        truncation_side: which end of a prompt too long for ``cutoff_len`` is cut (supervised, pairwise, kto):
            ``right`` keeps its beginning (LLaMA-Factory's rule), ``left`` keeps its end, next to the reply (TRL's
            ``keep_end``). Replies always keep their beginning; generation prompts always keep their end.
        packing: (supervised) pack several conversations into each row of ``cutoff_len`` tokens; attention and
            position ids are kept per conversation (see :mod:`lit_factory.data.packing`).
        mix_strategy: how several datasets combine: ``concat`` (in order), ``interleave_under`` (draw until the
            first runs out) or ``interleave_over`` (until the last runs out, repeating the others).
        interleave_probs: probability of drawing from each dataset when interleaving (default: equal).
        streaming: read the files lazily as an ``IterableDataset`` (corpora larger than memory); no disk cache.
        buffer_size: shuffle buffer of a stream (examples).
        preprocessing_num_workers: processes for the tokenising map (None: in-process).
        shuffle: shuffle the training set every epoch.
        num_workers: DataLoader worker processes.
        seed: seed of sampling, mixing, the train/validation split and the shuffling order.
        media: the model's image plugin (:mod:`lit_factory.data.media`): expands ``<image>`` placeholders into
            image tokens and batches the images as the model's inputs. The CLI passes the stage's (None for a
            text-only model: image paths then pass through as path lists).
    """

    def __init__(
        self,
        dataset: str | list[str],
        dataset_dir: str = "data",
        tokenizer: Any = None,
        objective: Union[str, type[Objective], Objective] = "supervised",
        template: str = "auto",
        enable_thinking: bool | None = None,
        cutoff_len: int = 1024,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        val_size: float = 0.0,
        max_samples: int | None = None,
        train_on_prompt: bool = False,
        mask_history: bool = False,
        truncation_side: Literal["right", "left"] = "right",
        packing: bool = False,
        mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat",
        interleave_probs: list[float] | None = None,
        streaming: bool = False,
        buffer_size: int = 1024,
        preprocessing_num_workers: int | None = None,
        shuffle: bool = True,
        num_workers: int = 0,
        seed: int = 42,
        media: Any = None,
    ) -> None:
        super().__init__()
        names = dataset.split(",") if isinstance(dataset, str) else list(dataset)
        self.dataset_names = [name.strip() for name in names if name.strip()]
        if not self.dataset_names:
            raise LitFactoryError("data.dataset is empty. Fix: name at least one entry of dataset_info.json.")
        self.objective = objective_component(objective)
        for field, value in (("cutoff_len", cutoff_len), ("batch_size", batch_size)):
            if value < 1:
                raise LitFactoryError(f"data.{field}={value} must be at least 1. Fix: set a positive number.")
        if max_samples is not None and max_samples < 1:
            raise LitFactoryError(f"data.max_samples={max_samples} must be at least 1 (or null for all rows).")
        if val_size < 0:
            raise LitFactoryError(f"data.val_size={val_size} is negative. Fix: 0 (no validation), a count or a ratio.")
        if streaming and 0 < val_size < 1:
            raise LitFactoryError(f"data.val_size={val_size}: a stream has no length to take a ratio of. Fix: a count.")
        self.objective.check_settings(batch_size, packing)
        if truncation_side not in ("right", "left"):
            raise LitFactoryError(f"data.truncation_side={truncation_side!r} is unknown. Fix: right (keep a long "
                                  "prompt's beginning, LLaMA-Factory's rule) or left (keep its end).")
        if mix_strategy not in ("concat", "interleave_under", "interleave_over"):
            raise LitFactoryError(f"data.mix_strategy={mix_strategy!r} is unknown. Fix: concat, interleave_under "
                                  "or interleave_over.")
        if interleave_probs is not None and len(interleave_probs) != len(self.dataset_names):
            raise LitFactoryError(f"data.interleave_probs has {len(interleave_probs)} values for "
                                  f"{len(self.dataset_names)} datasets. Fix: one probability per dataset.")
        if packing and media is not None:
            raise LitFactoryError("data.packing: packing rows with images is not supported yet. Fix: set packing: false.")
        self.media = media
        self.dataset_dir = resolve_shipped_path(dataset_dir)
        self.template_name = template
        self.enable_thinking = enable_thinking
        self.cutoff_len = cutoff_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.mix_strategy = mix_strategy
        self.interleave_probs = interleave_probs
        self.buffer_size = buffer_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.seed = seed
        self.preprocessing = Preprocessing(
            objective=self.objective, cutoff_len=cutoff_len, train_on_prompt=train_on_prompt, mask_history=mask_history,
            truncation_side=truncation_side, max_samples=max_samples, num_proc=preprocessing_num_workers,
            streaming=streaming, packing=packing, seed=seed,
        )
        self._tokenizer = tokenizer
        self._template: AnyTemplate | None = None
        self.train_set: Any = None
        self.val_set: Any = None
        # A tokenizer object does not belong in a checkpoint's hyperparameters; the stage records the model path.
        # The objective is recorded by name (a class path for one of your own): readable in hparams.yaml, and a
        # checkpoint loads without unpickling a class.
        objective = self.objective.key  # noqa: F841 (read by save_hyperparameters from this frame)
        self.save_hyperparameters(ignore=["tokenizer", "media"])

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use when it was given as a path."""
        if self._tokenizer is None:
            raise LitFactoryError("data.tokenizer is not set. Fix: give a tokenizer path (the CLI links the model's).")
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(resolve_shipped_path(self._tokenizer))
            except (OSError, ValueError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise LitFactoryError(
                    f"data.tokenizer={self._tokenizer!r}: could not load a tokenizer ({reason}). "
                    "Fix: point it at a folder with tokenizer files."
                ) from None
        return self._tokenizer

    @property
    def template(self) -> AnyTemplate:
        """The chat template, resolved on first use (``auto`` looks at the tokenizer)."""
        if self._template is None:
            self._template = get_template(self.template_name, self.tokenizer, self.enable_thinking)
        return self._template

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, or its eos id when it has no pad token."""
        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise LitFactoryError("data.tokenizer has neither a pad nor an eos token. Fix: use a tokenizer with one.")
        return pad_id

    def prepare(self, name: str) -> "Dataset":
        """One dataset's rows, ready for the collator (see :func:`lit_factory.data.pipeline.prepare_dataset`)."""
        template = self.template if self.objective.uses_template else None
        return prepare_dataset(name, self.dataset_dir, self.tokenizer, template, self.preprocessing, self.media)

    def setup(self, stage: str | None = None) -> None:
        """Load, align and tokenise every dataset once, mix them, then split off validation."""
        if self.train_set is not None or stage == "predict":  # predict_dataloader prepares its own rows
            return
        for name in self.dataset_names:  # catalogue errors first: they need no tokenizer
            get_dataset_spec(name, self.dataset_dir)
        parts = [self.prepare(name) for name in self.dataset_names]
        data = mix_datasets(parts, self.mix_strategy, self.interleave_probs, self.seed)
        if self.preprocessing.streaming:
            count = int(self.val_size)
            self.train_set = data.skip(count) if count else data
            self.val_set = data.take(count) if count else None
            return
        if len(data) == 0:
            raise LitFactoryError(
                f"data.dataset={','.join(self.dataset_names)}: no usable example left after alignment and "
                f"tokenization (cutoff_len={self.cutoff_len}). Fix: check the warnings above and the data files."
            )
        self.train_set, self.val_set = self._split(data)
        log.info(
            "data: %d training and %d validation examples from %s",
            len(self.train_set), len(self.val_set) if self.val_set is not None else 0, ", ".join(self.dataset_names),
        )

    def _split(self, data: "Dataset") -> tuple["Dataset", "Dataset | None"]:
        if self.val_size == 0:
            return data, None
        val_count = int(self.val_size) if self.val_size >= 1 else max(1, round(self.val_size * len(data)))
        if val_count >= len(data):
            raise LitFactoryError(
                f"data.val_size={self.val_size} leaves no training examples out of {len(data)}. "
                "Fix: lower val_size or add data."
            )
        split = data.train_test_split(test_size=val_count, seed=self.seed, shuffle=True)
        return split["train"], split["test"]

    def collator(self) -> Any:
        """The collator of this objective (see :mod:`lit_factory.data.collators`); with an image plugin, batches
        also carry the model's image inputs."""
        collate = self.objective.collator(self.pad_token_id, self.preprocessing)
        if self.media is not None and self.objective.images:
            from lit_factory.data.media import MediaCollator

            return MediaCollator(collate, self.media)
        return collate

    def _loader(self, dataset: Any, batch_size: int, shuffle: bool, collate_fn: Any = None,
                split: Optional[Literal["train", "val"]] = None, **loader_options: Any) -> "DataLoader":
        import torch
        from torch.utils.data import DataLoader

        from lit_factory.data.sampling import EpochShuffleSampler, ResumableDataLoader, ResumableSequentialSampler

        streaming = self.preprocessing.streaming
        if streaming and shuffle:
            dataset = dataset.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        shuffle = shuffle and not streaming
        loader_class = DataLoader
        sampler = None
        if split is not None and not streaming and self.trainer is not None and self.trainer.world_size > 1:
            # Our own distributed samplers, which Lightning keeps: its own always shuffles training data (ignoring
            # `shuffle: false`) and repeats validation rows to even out the ranks (they would count twice).
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
            from torch.utils.data import DistributedSampler

            ranks = dict(num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
            sampler = (DistributedSampler(dataset, shuffle=shuffle, seed=self.seed, **ranks) if split == "train"
                       else UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks))
        elif split == "train" and not streaming:
            # The order depends on (seed, epoch) only and the loader remembers its position: a run resumed from a
            # checkpoint in the middle of an epoch sees the batches the uninterrupted run would have seen.
            sampler = EpochShuffleSampler(dataset, self.seed) if shuffle else ResumableSequentialSampler(dataset)
        if split == "train":
            loader_class = ResumableDataLoader
            if loader_options:  # the training loader's step windows (see lit_factory.data.windows)
                from lit_factory.data.windows import StepWindowLoader as loader_class
        return loader_class(
            dataset.with_format("python") if streaming else dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            collate_fn=collate_fn or self.collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=not streaming and self.objective.drop_last(len(dataset), batch_size),
            # Each pass draws its worker seed from here, not from torch's global generator: a resumed run
            # starts its passes at other moments, and the dropout masks must not move with them.
            generator=torch.Generator().manual_seed(self.seed),
            **loader_options,
        )

    def train_dataloader(self) -> "DataLoader":
        """Training batches in the objective's format, shuffled each epoch from ``seed`` and the epoch number
        (unless ``shuffle`` is off), resumable in the middle of an epoch (streams restart at their beginning)."""
        self.setup()
        options = self.objective.window_options() or {}
        if options:
            # Token-level losses divide by the loss tokens of the whole optimizer step (see Stage.token_mean).
            window = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
            options = dict(window=window, **options)
        return self._loader(self.train_set, self.batch_size, self.shuffle, split="train", **options)

    def val_dataloader(self) -> "DataLoader | list":
        """Validation batches, or an empty list when ``val_size`` is 0 (Lightning then skips validation)."""
        self.setup()
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.eval_batch_size, False, split="val")

    def predict_dataloader(self) -> "DataLoader":
        """Every row of the datasets, in order and unsplit, as LEFT-padded generation prompts (the conversation up
        to its last reply) with that reply as ``labels_text``, ``eval_batch_size`` rows per batch (for
        ``lit-factory predict``)."""
        from dataclasses import replace

        settings = replace(self.preprocessing, objective=Prompt(), packing=False)
        parts = [prepare_dataset(name, self.dataset_dir, self.tokenizer, self.template, settings, self.media)
                 for name in self.dataset_names]
        data = mix_datasets(parts, self.mix_strategy, self.interleave_probs, self.seed)
        return self._loader(data, self.eval_batch_size, False, PromptCollator(self.pad_token_id, with_labels_text=True))
