"""Read a dataset entry into a ``datasets.Dataset`` (or ``IterableDataset`` when streaming).

Local files: the file extension picks the reader; a folder is read as all its files (one kind). Hub entries
(``hf_hub_url``/``ms_hub_url``) go through ``datasets.load_dataset`` with the entry's subset, split and folder; with
no network that fails, and the error says so and how to fix it. ``num_samples`` then sub- or over-samples (seeded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lit_factory.data.spec import DatasetSpec
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

# `datasets` builder for each extension it reads (LLaMA-Factory's FILEEXT2TYPE, minus the hub-only ones).
READERS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow", "txt": "text"}


def _reason(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_dataset_file(spec: DatasetSpec, streaming: bool = False, seed: int = 42) -> "Dataset | IterableDataset":
    """All rows the entry names (a local file or folder, or a Hub dataset), then ``num_samples`` applied."""
    dataset = _load_hub(spec, streaming) if spec.hub_id else _load_local(spec, streaming)
    if spec.num_samples is not None:
        dataset = sample_rows(dataset, spec.num_samples, seed)
    return dataset


def _load_local(spec: DatasetSpec, streaming: bool) -> Any:
    from datasets import load_dataset

    files = sorted(p for p in spec.path.iterdir() if p.is_file()) if spec.path.is_dir() else [spec.path]
    if not spec.path.exists() or not files:
        raise LitFactoryError(
            f"{spec.path}: data file not found (file_name of entry {spec.name!r} in {spec.info_file}). "
            "Fix: put the file there or correct file_name."
        )
    extensions = {p.suffix.lstrip(".").lower() for p in files}
    if len(extensions) != 1 or next(iter(extensions)) not in READERS:
        raise LitFactoryError(
            f"{spec.path}: cannot read files with extension(s) {sorted(extensions)} (entry {spec.name!r}). "
            f"Fix: use one of {sorted(READERS)}, one kind per folder."
        )
    reader = READERS[extensions.pop()]
    if reader in ("json", "csv", "text"):
        for file in files:
            _check_text(file, spec)
    try:
        return load_dataset(reader, data_files=[str(p) for p in files], split="train", streaming=streaming)
    except Exception as err:  # the readers raise many types; the user needs the file name and the reason
        where, reason = spec.path, _reason(err)
        if reader == "json":  # `datasets` says only that generation failed: find the line ourselves
            where, reason = next(((p, r) for p in files if (r := _json_problem(p))), (where, reason))
        raise LitFactoryError(
            f"{where}: could not be read as {reader} ({reason}; entry {spec.name!r}). Fix: check the file's format."
        ) from err


def _check_text(path: Path, spec: DatasetSpec) -> None:
    """Text data must be UTF-8 (the readers fail with no position), and an empty JSON file is no data set."""
    import codecs

    decoder, offset, head = codecs.getincrementaldecoder("utf-8")(), 0, ""
    with open(path, "rb") as file:  # in blocks: data files may be larger than memory
        while True:
            block = file.read(1 << 20)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                raise LitFactoryError(f"{path}: not UTF-8 text (invalid byte at offset {offset + err.start}; entry "
                                      f"{spec.name!r}). Fix: re-encode the file as UTF-8.") from None
            head = head or text[:64]
            offset += len(block)
            if not block:
                break
    if path.suffix.lower() == ".json" and offset < 64 and head.strip() in ("[]", "{}", ""):
        raise LitFactoryError(f"{path}: holds no rows (entry {spec.name!r}). Fix: add examples to it or remove "
                              f"{spec.name!r} from data.dataset.")


def _json_problem(path: Any) -> str | None:
    """Where a JSON or JSON-lines file stops parsing ("line N: why"), or None when it parses."""
    import json

    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            try:
                line.strip() and json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}: {err.msg}"
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"line {err.lineno}: {err.msg}"
    return None


def _load_hub(spec: DatasetSpec, streaming: bool) -> Any:
    from datasets import load_dataset

    try:
        return load_dataset(spec.hub_id, name=spec.subset, data_dir=spec.folder, split=spec.split,
                            streaming=streaming)
    except Exception as err:  # offline (ConnectionError, LocalEntryNotFoundError), unknown id, bad split, ...
        raise LitFactoryError(
            f"{spec.info_file}: entry {spec.name!r}: could not load Hub dataset {spec.hub_id!r} "
            f"(subset={spec.subset!r}, split={spec.split!r}: {_reason(err)}). Fix: check the id and the network, "
            "or download the files and set file_name."
        ) from None


def sample_rows(dataset: Any, num_samples: int, seed: int) -> Any:
    """``num_samples`` rows: a seeded random subset when fewer than the dataset has; whole copies of the dataset
    plus a seeded random rest when more (LLaMA-Factory's over-sampling). Streams just take the first rows."""
    import numpy as np

    if not hasattr(dataset, "__len__"):
        return dataset.take(num_samples)
    total = len(dataset)
    rng = np.random.default_rng(seed)
    indices = np.concatenate([
        np.tile(np.arange(total), num_samples // total),
        rng.permutation(total)[: num_samples % total],
    ])
    return dataset.select(indices.tolist())
