"""One named dataset -> the token columns of a data objective; several -> one mixed dataset.

Per dataset: check the entry fits the objective (:mod:`lit_factory.data.objectives`) -> read (loader) -> first
``max_samples`` rows -> the objective's rows (standard rows from align, or plain text) -> its encoder (tokenize) ->
pack (packing, when asked). Each step is a ``datasets`` map with an explicit cache key (caching), so a second run
with the same settings reads the tokenised rows from disk instead of preprocessing again; any setting that changes
the rows (tokenizer, template, cutoff_len, masking, objective, code) changes the key. With ``streaming`` the same
steps run lazily over an ``IterableDataset``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lit_factory.data.align import column_names
from lit_factory.data.caching import map_fingerprint
from lit_factory.data.loader import load_dataset_file
from lit_factory.data.spec import get_dataset_spec
from lit_factory.data.templates import AnyTemplate
from lit_factory.data.tokenize import Encoding

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from lit_factory.data.objectives import Objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides the tokenised rows (and so the cache key) besides the data itself."""

    objective: "Objective"
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    truncation_side: str = "right"
    max_samples: int | None = None
    num_proc: int | None = None
    streaming: bool = False
    packing: bool = False
    seed: int = 42


def prepare_dataset(name: str, dataset_dir: str, tokenizer: Any, template: AnyTemplate | None,
                    settings: Preprocessing, media: Any = None) -> "Dataset | IterableDataset":
    """The entry ``name`` of ``<dataset_dir>/dataset_info.json`` as the token columns ``settings.objective`` needs;
    ``media``: the model's image plugin (:mod:`lit_factory.data.media`), None for a text-only model."""
    objective = settings.objective
    spec = get_dataset_spec(name, dataset_dir)
    objective.check(spec)
    dataset = load_dataset_file(spec, streaming=settings.streaming, seed=settings.seed)
    if settings.max_samples is not None:
        if settings.streaming:
            dataset = dataset.take(settings.max_samples)
        elif settings.max_samples < len(dataset):
            dataset = dataset.select(range(settings.max_samples))
    rows = objective.rows(dataset, spec, settings.num_proc)
    encode = objective.encoder(Encoding(
        tokenizer, template, settings.cutoff_len, settings.train_on_prompt, settings.mask_history,
        settings.truncation_side, media, str(spec.info_file.parent), str(spec.path)))
    # 1,000 rows per map batch (the `datasets` default), said here because pretraining drops each batch's remainder.
    map_args: dict[str, Any] = {"batched": True, "batch_size": 1000}
    if not settings.streaming:
        media_key = media.fingerprint() if media is not None else None
        map_args.update(desc=f"{objective.progress_label} {name}", num_proc=settings.num_proc,
                        new_fingerprint=map_fingerprint(
                            rows, objective.fingerprint(), template, settings.cutoff_len, settings.train_on_prompt,
                            settings.mask_history, settings.truncation_side, media_key, tokenizer=tokenizer))
    tokenized = rows.map(encode, remove_columns=column_names(rows), with_indices=True, **map_args)
    if not settings.streaming and not objective.always_packs and len(tokenized) < len(rows):
        log.warning("skipped %d of %d rows of %s: no response token %sfits in cutoff_len=%d",
                    len(rows) - len(tokenized), len(rows), name,
                    "(or not every image token) " if media is not None else "", settings.cutoff_len)
    if settings.packing:
        from lit_factory.data.packing import pack_supervised

        tokenized = pack_supervised(tokenized, settings.cutoff_len, settings.streaming, settings.num_proc)
    return tokenized


def mix_datasets(parts: list[Any], strategy: str, probabilities: list[float] | None, seed: int) -> Any:
    """Concatenate the datasets in order, or interleave them: ``interleave_under`` stops when the first runs out
    (under-sampling), ``interleave_over`` when the last does (over-sampling); ``probabilities`` weigh the draws."""
    from datasets import concatenate_datasets, interleave_datasets

    if len(parts) == 1:
        return parts[0]
    if strategy == "concat":
        return concatenate_datasets(parts)
    stopping = "first_exhausted" if strategy == "interleave_under" else "all_exhausted"
    return interleave_datasets(parts, probabilities=probabilities, seed=seed, stopping_strategy=stopping)
