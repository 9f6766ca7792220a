"""Read a dataset entry's local file(s) into a ``datasets.Dataset``; the file extension picks the reader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lit_factory.data.spec import DatasetSpec
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset

# `datasets` builder for each extension it reads (LLaMA-Factory's FILEEXT2TYPE, minus the hub-only ones).
READERS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow", "txt": "text"}


def load_dataset_file(spec: DatasetSpec) -> "Dataset":
    """All rows of the file (or of every file in the folder) that ``spec.path`` names, truncated to num_samples."""
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
    try:
        dataset = load_dataset(reader, data_files=[str(p) for p in files], split="train")
    except Exception as err:  # the readers raise many types; the user needs the file name and the reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LitFactoryError(
            f"{spec.path}: could not be read as {reader} ({reason}). Fix: check the file's format."
        ) from err
    if spec.num_samples is not None and spec.num_samples < len(dataset):
        dataset = dataset.select(range(spec.num_samples))
    return dataset
