"""The data module: named datasets from a ``dataset_info.json`` -> padded training batches.

Per dataset: read the file (loader) -> truncate to ``max_samples`` -> align to standard conversation rows (align) ->
render with the chat template and tokenise with the loss mask (tokenize). Pretraining reads one text column and
packs it into fixed-size blocks instead. The datasets are concatenated in the order given, then split into train and
validation with ``seed``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl

from lit_factory.data.align import align_dataset, align_text
from lit_factory.data.collators import PaddingCollator
from lit_factory.data.loader import load_dataset_file
from lit_factory.data.spec import get_dataset_spec
from lit_factory.data.templates import Template, get_template
from lit_factory.data.tokenize import tokenize_pretrain_dataset, tokenize_supervised_dataset
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset
    from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class DataModule(pl.LightningDataModule):
    """Fine-tuning data from LLaMA-Factory style ``dataset_info.json`` entries.

    Args:
        dataset: entry names in ``<dataset_dir>/dataset_info.json``, as a list or comma-separated; concatenated in
            this order.
        dataset_dir: the folder holding ``dataset_info.json`` (file names in it are relative to this folder).
        tokenizer: a tokenizer folder or hub id, or a loaded tokenizer (the CLI passes the stage's own). It is not
            modified: without a pad token, batches are padded with the eos id.
        objective: ``supervised`` trains on the assistant replies of conversations; ``pretrain`` on plain text
            packed into blocks of ``cutoff_len`` tokens. The CLI sets it from the stage.
        template: chat template name (a file in ``templates/``) or a path to a template YAML; ``auto`` picks one
            from the tokenizer. Unused by ``pretrain``.
        cutoff_len: most tokens per example (supervised), exact tokens per block (pretrain).
        batch_size: training examples per batch.
        eval_batch_size: validation examples per batch; defaults to ``batch_size``.
        val_size: held-out validation examples: a count if >= 1, a fraction of the data if in (0, 1), none if 0.
        max_samples: keep only the first this many rows of each dataset (quick runs, debugging).
        train_on_prompt: put the loss on prompts too, not only on the replies.
        shuffle: shuffle the training set every epoch.
        num_workers: DataLoader worker processes.
        seed: seed of the train/validation split and of the shuffling order.
    """

    def __init__(
        self,
        dataset: str | list[str],
        dataset_dir: str = "data",
        tokenizer: Any = None,
        objective: Literal["supervised", "pretrain"] = "supervised",
        template: str = "auto",
        cutoff_len: int = 1024,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        val_size: float = 0.0,
        max_samples: int | None = None,
        train_on_prompt: bool = False,
        shuffle: bool = True,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        names = dataset.split(",") if isinstance(dataset, str) else list(dataset)
        self.dataset_names = [name.strip() for name in names if name.strip()]
        if not self.dataset_names:
            raise LitFactoryError("data.dataset is empty. Fix: name at least one entry of dataset_info.json.")
        if objective not in ("supervised", "pretrain"):
            raise LitFactoryError(f"data.objective={objective!r} is unknown. Fix: use 'supervised' or 'pretrain'.")
        for field, value in (("cutoff_len", cutoff_len), ("batch_size", batch_size)):
            if value < 1:
                raise LitFactoryError(f"data.{field}={value} must be at least 1. Fix: set a positive number.")
        if max_samples is not None and max_samples < 1:
            raise LitFactoryError(f"data.max_samples={max_samples} must be at least 1 (or null for all rows).")
        if val_size < 0:
            raise LitFactoryError(f"data.val_size={val_size} is negative. Fix: 0 (no validation), a count or a ratio.")
        self.dataset_dir = dataset_dir
        self.objective = objective
        self.template_name = template
        self.cutoff_len = cutoff_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.max_samples = max_samples
        self.train_on_prompt = train_on_prompt
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.seed = seed
        self._tokenizer = tokenizer
        self._template: Template | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        # A tokenizer object does not belong in a checkpoint's hyperparameters; the stage records the model path.
        self.save_hyperparameters(ignore=["tokenizer"])

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use when it was given as a path."""
        if self._tokenizer is None:
            raise LitFactoryError("data.tokenizer is not set. Fix: give a tokenizer path (the CLI links the model's).")
        if isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer)
            except (OSError, ValueError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise LitFactoryError(
                    f"data.tokenizer={self._tokenizer!r}: could not load a tokenizer ({reason}). "
                    "Fix: point it at a folder with tokenizer files."
                ) from None
        return self._tokenizer

    @property
    def template(self) -> Template:
        """The chat template, resolved on first use (``auto`` looks at the tokenizer)."""
        if self._template is None:
            self._template = get_template(self.template_name, self.tokenizer)
        return self._template

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, or its eos id when it has no pad token."""
        tokenizer = self.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise LitFactoryError("data.tokenizer has neither a pad nor an eos token. Fix: use a tokenizer with one.")
        return pad_id

    def setup(self, stage: str | None = None) -> None:
        """Load, align and tokenise every dataset once, then split off validation."""
        if self.train_set is not None:
            return
        from datasets import concatenate_datasets

        parts = [self._prepare(name) for name in self.dataset_names]
        data = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
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

    def _prepare(self, name: str) -> "Dataset":
        spec = get_dataset_spec(name, self.dataset_dir)
        dataset = load_dataset_file(spec)
        if self.max_samples is not None and self.max_samples < len(dataset):
            dataset = dataset.select(range(self.max_samples))
        if self.objective == "pretrain":
            return tokenize_pretrain_dataset(align_text(dataset, spec), self.tokenizer, self.cutoff_len, name)
        aligned = align_dataset(dataset, spec)
        return tokenize_supervised_dataset(
            aligned, self.tokenizer, self.template, self.cutoff_len, self.train_on_prompt, name
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

    def _loader(self, dataset: "Dataset", batch_size: int, shuffle: bool) -> "DataLoader":
        import torch
        from torch.utils.data import DataLoader

        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=PaddingCollator(self.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> "DataLoader":
        """Shuffled (unless ``shuffle`` is off), right-padded training batches."""
        self.setup()
        return self._loader(self.train_set, self.batch_size, self.shuffle)

    def val_dataloader(self) -> "DataLoader | list":
        """Validation batches, or an empty list when ``val_size`` is 0 (Lightning then skips validation)."""
        self.setup()
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.eval_batch_size, False)
