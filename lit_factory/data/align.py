"""Dataset formats (alpaca, sharegpt) -> one standard conversation row.

The standard row, the only shape the tokenizer step reads::

    {
      "messages": [{"role": "user", "content": str}, {"role": "assistant", "content": str}, ...],
      "system": str,   # "" when the row has none (the template's default system prompt then applies)
      "tools": str,    # tool definitions as the data gives them (a JSON string), "" when none
    }

``messages`` alternate user/assistant, start with a user message and end with a non-empty assistant message.

* alpaca: each ``history`` pair ``[prompt, response]`` becomes an earlier user/assistant exchange; the last user
  message is ``prompt + "\\n" + query`` (just ``prompt`` when the query is empty), as in LLaMA-Factory.
* sharegpt: messages are mapped through the entry's tags. A leading message with the system tag becomes ``system``.
  Until tool calling lands, observation (tool result) messages are mapped to ``user`` and function-call messages to
  ``assistant``, so tool-use sets train as plain chats.

Rows that cannot be aligned (an odd number of turns, roles out of order, an empty response, a missing column value)
are dropped; each dataset logs one warning that counts them by reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from lit_factory.data.caching import map_fingerprint
from lit_factory.data.spec import DatasetSpec
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

SKIP_COLUMN = "_skip_reason"


def align_alpaca(row: dict[str, Any], spec: DatasetSpec) -> dict[str, Any] | str:
    """One alpaca row as a standard row, or the reason it cannot be one."""
    messages = []
    history_column = spec.column("history")
    history = row.get(history_column) if history_column else None
    for pair in history or []:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            return "history entry is not a [prompt, response] pair"
        if not pair[1].strip():
            return "empty response in history"
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    parts = [row.get(spec.column(key)) for key in ("prompt", "query") if spec.column(key)]
    messages.append({"role": "user", "content": "\n".join(str(part) for part in parts if part)})
    response = row.get(spec.column("response"))
    if not isinstance(response, str) or not response.strip():
        return "empty response"
    messages.append({"role": "assistant", "content": response})
    return {"messages": messages, "system": _text(row, spec, "system"), "tools": _text(row, spec, "tools")}


def align_sharegpt(row: dict[str, Any], spec: DatasetSpec) -> dict[str, Any] | str:
    """One sharegpt row as a standard row, or the reason it cannot be one."""
    tags = spec.tags
    turns = row.get(spec.column("messages"))
    if not isinstance(turns, list) or not turns:
        return "no messages"
    if any(not isinstance(turn, dict) for turn in turns):
        return "a message is not an object"
    system = _text(row, spec, "system")
    if turns[0].get(tags["role_tag"]) == tags["system_tag"]:
        system, turns = turns[0].get(tags["content_tag"]) or "", turns[1:]
    # Even positions are user-side (user or tool result), odd positions assistant-side (reply or function call).
    user_side = {tags["user_tag"]: "user", tags["observation_tag"]: "user"}
    assistant_side = {tags["assistant_tag"]: "assistant", tags["function_tag"]: "assistant"}
    messages = []
    for index, turn in enumerate(turns):
        roles = user_side if index % 2 == 0 else assistant_side
        role = roles.get(turn.get(tags["role_tag"]))
        if role is None:
            return "roles out of order"
        content = turn.get(tags["content_tag"])
        if not isinstance(content, str):
            return "a message has no content"
        if role == "assistant" and not content.strip():
            return "empty response"
        messages.append({"role": role, "content": content})
    if len(messages) % 2 != 0:
        return "odd number of turns"
    return {"messages": messages, "system": system, "tools": _text(row, spec, "tools")}


def _text(row: dict[str, Any], spec: DatasetSpec, key: str) -> str:
    column = spec.column(key)
    value = row.get(column) if column else None
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


ALIGNERS = {"alpaca": align_alpaca, "sharegpt": align_sharegpt}


def align_dataset(dataset: "Dataset", spec: DatasetSpec) -> "Dataset":
    """The dataset's rows as standard rows; malformed rows are dropped with one counted warning."""
    from datasets import Features, List, Value

    if spec.ranking:
        raise LitFactoryError(
            f"{spec.info_file}: entry {spec.name!r} is a preference (ranking) dataset; the supervised objective "
            "needs one response per row. Fix: use it with a preference stage, or pick another dataset."
        )
    needed = [spec.column("messages")] if spec.formatting == "sharegpt" else [spec.column("response")]
    needed += [spec.column(key) for key in ("prompt", "query") if spec.formatting == "alpaca"]
    needed += list(spec.columns.values())
    missing = sorted({column for column in needed if column and column not in dataset.column_names})
    if spec.formatting == "alpaca" and "query" not in spec.columns and "input" in missing:
        missing.remove("input")  # the default query column is optional, as in LLaMA-Factory
    if missing:
        raise LitFactoryError(
            f"{spec.path}: column(s) {missing} not found (columns of entry {spec.name!r} in {spec.info_file}); "
            f"the file has {dataset.column_names}. Fix: set the entry's columns to the file's names."
        )

    aligner = ALIGNERS[spec.formatting]

    def align_batch(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"messages": [], "system": [], "tools": [], SKIP_COLUMN: []}
        for index in range(len(next(iter(batch.values())))):
            row = {key: values[index] for key, values in batch.items()}
            aligned = aligner(row, spec)
            if isinstance(aligned, str):
                aligned = {"messages": [], "system": "", "tools": "", SKIP_COLUMN: aligned}
            else:
                aligned[SKIP_COLUMN] = ""
            for key in out:
                out[key].append(aligned[key])
        return out

    # Explicit features: a batch of only skipped rows must not make Arrow infer a different type.
    message = {"role": Value("string"), "content": Value("string")}
    features = Features(
        {"messages": List(message), "system": Value("string"), "tools": Value("string"), SKIP_COLUMN: Value("string")}
    )
    aligned = dataset.map(
        align_batch, batched=True, remove_columns=dataset.column_names, features=features,
        desc=f"Aligning {spec.name}", new_fingerprint=map_fingerprint(dataset, "align", spec),
    )
    reasons = Counter(reason for reason in aligned[SKIP_COLUMN] if reason)
    if reasons:
        detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        log.warning("skipped %d of %d rows in %s: %s", sum(reasons.values()), len(aligned), spec.path, detail)
        aligned = aligned.filter(lambda reason: not reason, input_columns=SKIP_COLUMN)
    return aligned.remove_columns(SKIP_COLUMN)


def align_text(dataset: "Dataset", spec: DatasetSpec) -> "Dataset":
    """The dataset as one ``text`` column, for the pretrain objective: the entry's ``prompt`` column, else ``text``."""
    if spec.formatting != "alpaca":
        raise LitFactoryError(
            f"{spec.info_file}: entry {spec.name!r} is {spec.formatting} (conversations); the pretrain objective "
            "reads plain text. Fix: use a text dataset, e.g. with \"columns\": {\"prompt\": \"text\"}."
        )
    column = spec.text_column
    if column not in dataset.column_names:
        raise LitFactoryError(
            f"{spec.path}: no text column {column!r} (entry {spec.name!r} in {spec.info_file}); the file has "
            f"{dataset.column_names}. Fix: set the entry's \"columns\": {{\"prompt\": \"<text column>\"}}."
        )
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset
