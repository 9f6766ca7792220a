"""``dataset_info.json``: the catalogue that names datasets and says how to read them (LLaMA-Factory's format).

An entry looks like::

    "glaive_toolcall_en_demo": {
      "file_name": "glaive_toolcall_en_demo.json",     # a file or a folder, relative to the dataset_dir
      "formatting": "sharegpt",                        # or "alpaca" (the default)
      "columns": {"messages": "conversations", "tools": "tools"},
      "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    }

Besides ``file_name`` (a file or folder next to the catalogue), an entry may name a Hugging Face Hub dataset
(``hf_hub_url``) or a ModelScope one (``ms_hub_url``, read through ``datasets`` as well, since ModelScope mirrors
them there); ``subset``, ``split`` (default ``train``) and ``folder`` select inside it. ``om_hub_url`` and loading
scripts are rejected with an error that names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_factory.errors import LitFactoryError

INFO_FILE = "dataset_info.json"

# Column and tag defaults of LLaMA-Factory's DatasetAttr, so that its dataset_info.json files read the same here.
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
}
DEFAULT_TAGS: dict[str, str] = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
KNOWN_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos",
                 "audios", "chosen", "rejected", "kto_tag"}
HUB_FIELDS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
SUPPORTED_HUBS = ("hf_hub_url", "ms_hub_url")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``dataset_info.json``.

    Args:
        name: the entry's key.
        path: the data file (or folder of files) it points at, resolved against the dataset_dir.
        info_file: the ``dataset_info.json`` it came from (named in error messages).
        formatting: ``alpaca`` (instruction/input/output columns) or ``sharegpt`` (a list of role-tagged messages).
        columns: the column names the entry sets explicitly; :meth:`column` adds the formatting's defaults.
        tags: sharegpt role and content keys, defaults filled in.
        num_samples: how many rows to take: fewer than the file has takes a random subset (seeded), more repeats
            the file and draws the rest at random (over-sampling), as LLaMA-Factory does.
        ranking: the entry is a preference (chosen/rejected) dataset.
        hub_id: the Hub dataset id (``hf_hub_url`` / ``ms_hub_url``); ``path`` is unused then.
        subset: the Hub dataset's configuration name.
        split: the split to read.
        folder: a folder inside the Hub dataset (``data_dir``).
    """

    name: str
    path: Path
    info_file: Path
    formatting: Literal["alpaca", "sharegpt"] = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))
    num_samples: int | None = None
    ranking: bool = False
    hub_id: str | None = None
    subset: str | None = None
    split: str = "train"
    folder: str | None = None

    def column(self, key: str) -> str | None:
        """The file's column for the standard field ``key`` (``prompt``, ``messages``, ...), or None if unused."""
        return self.columns.get(key, DEFAULT_COLUMNS[self.formatting].get(key))

    @property
    def text_column(self) -> str:
        """The column the pretrain objective reads: the entry's ``prompt`` column, else ``text``."""
        return self.columns.get("prompt", "text")


def read_dataset_info(dataset_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The raw entries of ``<dataset_dir>/dataset_info.json``."""
    info_file = Path(dataset_dir) / INFO_FILE
    if not info_file.is_file():
        raise LitFactoryError(
            f"{info_file}: file not found (data.dataset_dir={str(dataset_dir)!r}). Fix: point data.dataset_dir at "
            f"the folder that holds {INFO_FILE}."
        )
    try:
        entries = json.loads(info_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LitFactoryError(f"{info_file}: not valid JSON (line {err.lineno}: {err.msg}). Fix the syntax.") from None
    if not isinstance(entries, dict):
        raise LitFactoryError(f"{info_file}: must be a JSON object of named entries. Fix: {{\"name\": {{...}}}}.")
    return entries


def get_dataset_spec(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """The entry ``name`` of ``<dataset_dir>/dataset_info.json``, checked and with defaults filled in."""
    entries = read_dataset_info(dataset_dir)
    info_file = Path(dataset_dir) / INFO_FILE
    if name not in entries:
        local = [key for key, entry in entries.items() if isinstance(entry, dict) and "file_name" in entry]
        shown = ", ".join(local[:8]) + (", ..." if len(local) > 8 else "")
        raise LitFactoryError(
            f"{info_file}: no dataset named {name!r} (data.dataset). Fix: add an entry or use one of: {shown}."
        )
    return parse_entry(name, entries[name], info_file)


def parse_entry(name: str, entry: Any, info_file: Path) -> DatasetSpec:
    """Check one raw entry and turn it into a :class:`DatasetSpec`."""
    where = f"{info_file}: entry {name!r}"
    if not isinstance(entry, dict):
        raise LitFactoryError(f"{where} must be an object. Fix: {{\"file_name\": \"...\"}}.")
    hub_id = next((entry[key] for key in SUPPORTED_HUBS if key in entry), None)
    if "file_name" not in entry and hub_id is None:
        hub = [key for key in HUB_FIELDS if key in entry]
        if hub:
            raise LitFactoryError(
                f"{where} is loaded via {hub[0]}; hub and script datasets are not supported in this version. "
                "Fix: download the files and set file_name."
            )
        raise LitFactoryError(f"{where} has no file_name. Fix: set file_name to a file next to {info_file.name}.")
    if "file_name" in entry:
        hub_id = None  # a local copy wins, as in LLaMA-Factory's load order
    formatting = entry.get("formatting", "alpaca")
    if formatting not in DEFAULT_COLUMNS:
        raise LitFactoryError(f"{where}: formatting {formatting!r} is unknown. Fix: use 'alpaca' or 'sharegpt'.")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise LitFactoryError(f"{where}: columns and tags must be objects. Fix: {{\"prompt\": \"instruction\"}}.")
    for key in columns:
        if key not in KNOWN_COLUMNS:
            raise LitFactoryError(f"{where}: columns.{key} is unknown. Fix: use some of {sorted(KNOWN_COLUMNS)}.")
    for key in tags:
        if key not in DEFAULT_TAGS:
            raise LitFactoryError(f"{where}: tags.{key} is unknown. Fix: use some of {sorted(DEFAULT_TAGS)}.")
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise LitFactoryError(f"{where}: num_samples must be a positive integer, got {num_samples!r}.")
    return DatasetSpec(
        name=name,
        path=info_file.parent / entry.get("file_name", ""),
        info_file=info_file,
        formatting=formatting,
        columns=dict(columns),
        tags={**DEFAULT_TAGS, **tags},
        num_samples=num_samples,
        ranking=bool(entry.get("ranking", False)),
        hub_id=hub_id,
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        folder=entry.get("folder"),
    )
