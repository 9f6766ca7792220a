"""One named dataset -> the token columns of a data objective; several -> one mixed dataset.

Per dataset: read (loader) -> first ``max_samples`` rows -> align to standard rows (align) -> check the rows fit the
objective -> render and tokenise (tokenize) -> pack (packing, when asked). Each step is a ``datasets`` map with an
explicit cache key (caching), so a second run with the same settings reads the tokenised rows from disk instead of
preprocessing again; any setting that changes the rows (tokenizer, template, cutoff_len, masking, objective, code)
changes the key. With ``streaming`` the same steps run lazily over an ``IterableDataset``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lit_factory.data.align import (
    SKIP_COLUMN, align_batch_fn, align_dataset, align_text, check_columns, standard_features,
)
from lit_factory.data.caching import map_fingerprint
from lit_factory.data.loader import load_dataset_file
from lit_factory.data.spec import DatasetSpec, get_dataset_spec
from lit_factory.data.templates import AnyTemplate
from lit_factory.data.tokenize import encoder, pack_pretrain_blocks
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

log = logging.getLogger(__name__)

OBJECTIVES = ("supervised", "pretrain", "pairwise", "kto", "prompt")


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides the tokenised rows (and so the cache key) besides the data itself."""

    objective: str
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    truncation_side: str = "right"
    max_samples: int | None = None
    num_proc: int | None = None
    streaming: bool = False
    packing: bool = False
    seed: int = 42


def check_objective(spec: DatasetSpec, objective: str) -> None:
    """One line naming the entry and the fix when the dataset's kind does not fit the objective."""
    where = f"{spec.info_file}: entry {spec.name!r}"
    if objective == "pairwise" and not spec.ranking:
        raise LitFactoryError(
            f"{where} is not a ranking dataset; objective 'pairwise' needs chosen/rejected replies. Fix: set "
            "\"ranking\": true with chosen/rejected columns, or use a supervised stage."
        )
    if objective in ("supervised", "kto") and spec.ranking:
        raise LitFactoryError(
            f"{where} is a preference (ranking) dataset; the {objective} objective needs one response per row. "
            "Fix: use it with a pairwise stage (DPO, ORPO, SimPO, reward), or pick another dataset."
        )
    if objective == "kto" and not spec.column("kto_tag"):
        raise LitFactoryError(
            f"{where} has no kto_tag column; objective 'kto' needs a desirable/undesirable flag per row. Fix: add "
            "\"columns\": {\"kto_tag\": \"<bool column>\"} to the entry."
        )


def _column_names(dataset: Any) -> list[str]:
    names = dataset.column_names
    if names is None:  # a stream whose schema is unknown until read
        names = list(next(iter(dataset)).keys())
    return list(names)


def _align(dataset: Any, spec: DatasetSpec, settings: Preprocessing) -> Any:
    if not settings.streaming:
        return align_dataset(dataset, spec, settings.num_proc)
    from datasets import Value

    check_columns(_column_names(dataset), spec)
    features = standard_features()
    features[SKIP_COLUMN] = Value("string")
    aligned = dataset.map(align_batch_fn(spec), batched=True, remove_columns=_column_names(dataset),
                          features=features)

    def keep(reason: str) -> bool:
        if reason:  # a stream cannot be counted up front: each skipped row is reported as it passes
            log.warning("skipped a row of %s: %s", spec.path, reason)
        return not reason

    return aligned.filter(keep, input_columns=SKIP_COLUMN).remove_columns(SKIP_COLUMN)


def prepare_dataset(name: str, dataset_dir: str, tokenizer: Any, template: AnyTemplate | None,
                    settings: Preprocessing, media: Any = None) -> "Dataset | IterableDataset":
    """The entry ``name`` of ``<dataset_dir>/dataset_info.json`` as the token columns ``settings.objective`` needs;
    ``media``: the model's image plugin (:mod:`lit_factory.data.media`), None for a text-only model."""
    spec = get_dataset_spec(name, dataset_dir)
    if settings.objective != "pretrain":
        check_objective(spec, settings.objective)
    dataset = load_dataset_file(spec, streaming=settings.streaming, seed=settings.seed)
    if settings.max_samples is not None:
        if settings.streaming:
            dataset = dataset.take(settings.max_samples)
        elif settings.max_samples < len(dataset):
            dataset = dataset.select(range(settings.max_samples))
    map_args: dict[str, Any] = {"batched": True}
    if settings.objective == "pretrain":
        text = align_text(dataset, spec)

        def pack_batch(batch: dict[str, list]) -> dict[str, list]:
            return {"input_ids": pack_pretrain_blocks(batch["text"], tokenizer, settings.cutoff_len)}

        if not settings.streaming:
            map_args.update(desc=f"Packing {name}", num_proc=settings.num_proc, new_fingerprint=map_fingerprint(
                text, "pretrain", settings.cutoff_len, tokenizer=tokenizer))
        return text.map(pack_batch, batch_size=1000, remove_columns=["text"], **map_args)

    aligned = _align(dataset, spec, settings)
    encode = encoder(settings.objective, tokenizer, template, settings.cutoff_len, settings.train_on_prompt,
                     settings.mask_history, settings.truncation_side, media, str(spec.info_file.parent), str(spec.path))
    media_key = media.fingerprint() if media is not None else None
    columns = _column_names(aligned) if not settings.streaming else list(standard_features())
    if not settings.streaming:
        map_args.update(desc=f"Tokenizing {name}", num_proc=settings.num_proc, new_fingerprint=map_fingerprint(
            aligned, settings.objective, template, settings.cutoff_len, settings.train_on_prompt,
            settings.mask_history, settings.truncation_side, media_key, tokenizer=tokenizer))
    tokenized = aligned.map(encode, remove_columns=columns, with_indices=True, **map_args)
    if not settings.streaming and len(tokenized) < len(aligned):
        log.warning("skipped %d of %d rows of %s: no response token %sfits in cutoff_len=%d",
                    len(aligned) - len(tokenized), len(aligned), name,
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
