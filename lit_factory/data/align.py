"""Dataset formats (alpaca, sharegpt, OpenAI messages) -> one standard row.

The standard row, the only shape the tokenizer step reads::

    {
      "messages": [{"role": ..., "content": str}, ...],  # the conversation (see below)
      "system": str | None,  # None when the row has none (the template's default system prompt then applies)
      "tools": str,       # tool definitions as a JSON string (a list of function schemas), "" when none
      "chosen": str,      # ranking rows: the preferred reply to the last message; "" otherwise
      "rejected": str,    # ranking rows: the dispreferred reply; "" otherwise
      "kto_tag": bool | None,  # rows of a kto_tag column: is the final reply desirable; None otherwise
      "images": [str], "videos": [str], "audios": [str],  # media paths, carried through (resolved by the stage)
    }

``messages`` alternate a user side (role ``user``, or ``observation`` for tool results) and an assistant side
(role ``assistant``, or ``function`` for tool calls as JSON, see :mod:`lit_factory.data.tool_messages`), starting
with the user side. Rows to train on end with a non-empty assistant-side message; ranking rows end with a
user-side message and carry the two candidate replies in ``chosen``/``rejected``.

* alpaca: each ``history`` pair ``[prompt, response]`` becomes an earlier user/assistant exchange; the last user
  message is ``prompt + "\\n" + query`` (just ``prompt`` when the query is empty), as in LLaMA-Factory.
* sharegpt: messages are mapped through the entry's tags; a leading message with the system tag becomes ``system``.
  Messages already in OpenAI's shape (``role``/``content`` keys, ``tool`` results, ``tool_calls``) are read as
  such whatever the tags say, so chat-completions data needs no tags: an assistant message's text is kept next to
  its ``tool_calls`` (one function message), and consecutive ``tool`` results stay separate results of one
  observation message, as ``apply_chat_template`` writes them.

The system prompt: a system message is used as written, even when empty (as ``apply_chat_template`` does); an
empty or missing ``system`` column value means none (``None``: the template's default, as in LLaMA-Factory).

Rows that cannot be aligned (an odd number of turns, roles out of order, an empty response, a missing column value,
chosen equal to rejected) are dropped; each dataset logs one warning that counts them by reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from lit_factory.data.caching import map_fingerprint
from lit_factory.data.spec import DatasetSpec
from lit_factory.data.tool_messages import function_content, observation_content
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset, Features, IterableDataset

log = logging.getLogger(__name__)

SKIP_COLUMN = "_skip_reason"
MEDIA = ("images", "videos", "audios")
USER_SIDE = ("user", "observation")
ASSISTANT_SIDE = ("assistant", "function")
# How OpenAI chat-completions messages map to our roles.
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "tool": "observation", "function": "observation"}


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
    if spec.ranking:
        chosen, rejected = row.get(spec.column("chosen")), row.get(spec.column("rejected"))
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
            return "empty chosen or rejected response"
        return _standard(row, spec, messages, _text(row, spec, "system") or None, chosen=chosen, rejected=rejected)
    response = row.get(spec.column("response"))
    if not isinstance(response, str) or not response.strip():
        return "empty response"
    messages.append({"role": "assistant", "content": response})
    return _standard(row, spec, messages, _text(row, spec, "system") or None)


def align_sharegpt(row: dict[str, Any], spec: DatasetSpec) -> dict[str, Any] | str:
    """One sharegpt (or OpenAI messages) row as a standard row, or the reason it cannot be one."""
    turns = row.get(spec.column("messages"))
    if not isinstance(turns, list) or not turns:
        return "no messages"
    if any(not isinstance(turn, dict) for turn in turns):
        return "a message is not an object"
    system = _text(row, spec, "system") or None
    messages = _openai_messages(turns) if _is_openai(turns, spec) else _tagged_messages(turns, spec)
    if isinstance(messages, str):
        return messages
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    for index, message in enumerate(messages):
        side = USER_SIDE if index % 2 == 0 else ASSISTANT_SIDE
        if message["role"] not in side:
            return "roles out of order"
        if not isinstance(message["content"], str):
            return "a message has no content"
        if message["role"] in ASSISTANT_SIDE and not message["content"].strip():
            return "empty response"
    if spec.ranking:
        if len(messages) % 2 != 1:
            return "ranking prompt does not end with a user message"
        replies = [_ranking_reply(row.get(spec.column(key)), spec) for key in ("chosen", "rejected")]
        if any(reply is None for reply in replies):
            return "chosen or rejected is not an assistant message"
        return _standard(row, spec, messages, system, chosen=replies[0], rejected=replies[1])
    if len(messages) % 2 != 0:
        return "odd number of turns"
    return _standard(row, spec, messages, system)


def _is_openai(turns: list[dict], spec: DatasetSpec) -> bool:
    return spec.tags["role_tag"] not in turns[0] and "role" in turns[0]


def _tagged_messages(turns: list[dict], spec: DatasetSpec) -> list[dict[str, Any]] | str:
    tags = spec.tags
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "observation",
             tags["function_tag"]: "function", tags["system_tag"]: "system"}
    messages = []
    for index, turn in enumerate(turns):
        role = roles.get(turn.get(tags["role_tag"]))
        if role is None:  # named apart from misordered roles: the fix is the tags in dataset_info.json
            return f"unknown role {turn.get(tags['role_tag'])!r} (set its tag under 'tags' in dataset_info.json)"
        if role == "system" and index > 0:
            return "roles out of order"
        messages.append({"role": role, "content": turn.get(tags["content_tag"])})
    return messages


def _openai_messages(turns: list[dict]) -> list[dict[str, Any]] | str:
    messages: list[dict[str, Any]] = []
    results: list[str] = []  # consecutive tool results: one observation message, each result kept apart
    for index, turn in enumerate(turns):
        role, content = turn.get("role"), _content_text(turn.get("content"))
        if role in ("tool", "function"):
            if not isinstance(content, str):
                return "a message has no content"
            results.append(content)
            continue
        if results:
            messages.append({"role": "observation", "content": observation_content(results)})
            results = []
        if role == "system" and index == 0:
            messages.append({"role": "system", "content": content})
        elif role == "assistant" and turn.get("tool_calls"):
            calls = [call.get("function", call) for call in turn["tool_calls"]]
            calls = [{"name": c.get("name"), "arguments": _json_value(c.get("arguments"))} for c in calls]
            text = content if isinstance(content, str) else ""
            messages.append({"role": "function", "content": function_content(calls, text)})
        elif role in OPENAI_ROLES:
            messages.append({"role": OPENAI_ROLES[role], "content": content})
        else:
            return "roles out of order"
    if results:
        messages.append({"role": "observation", "content": observation_content(results)})
    return messages


def _content_text(content: Any) -> Any:
    """OpenAI content may be a list of parts; the text parts are joined (media parts travel in the media columns)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return content


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _ranking_reply(value: Any, spec: DatasetSpec) -> str | None:
    """A ranking dataset's chosen/rejected cell: a sharegpt message on the assistant side, or plain text."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, dict):
        tags = spec.tags
        role = value.get(tags["role_tag"], value.get("role"))
        content = value.get(tags["content_tag"], value.get("content"))
        if role in (tags["assistant_tag"], tags["function_tag"], "assistant") and isinstance(content, str):
            return content if content.strip() else None
    return None


def _standard(
    row: dict[str, Any], spec: DatasetSpec, messages: list[dict], system: str | None = None,
    chosen: str = "", rejected: str = "",
) -> dict[str, Any] | str:
    if spec.ranking and chosen == rejected:
        return "chosen equals rejected"
    kto_column = spec.column("kto_tag")
    kto_tag = None
    if kto_column:
        kto_tag = row.get(kto_column)
        if not isinstance(kto_tag, bool):
            return "kto_tag is not true/false"
    media = {}
    for key in MEDIA:
        column = spec.column(key)
        value = row.get(column) if column else None
        value = [value] if isinstance(value, str) else list(value or [])
        media[key] = [str(item) for item in value]
        missing = next((item for item in media[key] if "://" not in item and not (spec.info_file.parent / item).exists()), None)
        if missing is not None:  # relative paths are read from the dataset_dir, as in LLaMA-Factory
            return f"{key[:-1]} file not found: {missing!r}"
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "system": system,
        "tools": _text(row, spec, "tools"),
        "chosen": chosen,
        "rejected": rejected,
        "kto_tag": kto_tag,
        **media,
    }


def _text(row: dict[str, Any], spec: DatasetSpec, key: str) -> str:
    column = spec.column(key)
    value = row.get(column) if column else None
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


ALIGNERS = {"alpaca": align_alpaca, "sharegpt": align_sharegpt}


def standard_features() -> "Features":
    """The Arrow schema of standard rows (explicit: a batch of skipped rows must not make Arrow guess the types)."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({
        "messages": List(message), "system": Value("string"), "tools": Value("string"),
        "chosen": Value("string"), "rejected": Value("string"), "kto_tag": Value("bool"),
        **{key: List(Value("string")) for key in MEDIA},
    })


def check_columns(column_names: list[str], spec: DatasetSpec) -> None:
    """Raise one line naming the file and the missing column(s) when the entry names columns the file lacks."""
    needed = [spec.column("messages")] if spec.formatting == "sharegpt" else [spec.column("response")]
    if spec.formatting == "alpaca":
        needed += [spec.column(key) for key in ("prompt", "query")]
        if spec.ranking:
            needed = [column for column in needed if column != spec.column("response")]
    needed += [spec.column(key) for key in ("chosen", "rejected")] if spec.ranking else []
    needed += list(spec.columns.values())
    missing = sorted({column for column in needed if column and column not in column_names})
    if spec.formatting == "alpaca" and "query" not in spec.columns and "input" in missing:
        missing.remove("input")  # the default query column is optional, as in LLaMA-Factory
    if missing:
        raise LitFactoryError(
            f"{spec.path}: column(s) {missing} not found (columns of entry {spec.name!r} in {spec.info_file}); "
            f"the file has {column_names}. Fix: set the entry's columns to the file's names."
        )


def align_batch_fn(spec: DatasetSpec):
    """The batched map function that turns raw rows into standard rows plus a skip-reason column."""
    aligner = ALIGNERS[spec.formatting]
    keys = list(standard_features()) + [SKIP_COLUMN]
    empty = {"messages": [], "system": None, "tools": "", "chosen": "", "rejected": "", "kto_tag": None,
             **{key: [] for key in MEDIA}}

    def align_batch(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in keys}
        for index in range(len(next(iter(batch.values())))):
            row = {key: values[index] for key, values in batch.items()}
            aligned = aligner(row, spec)
            aligned = {**empty, SKIP_COLUMN: aligned} if isinstance(aligned, str) else {**aligned, SKIP_COLUMN: ""}
            for key in keys:
                out[key].append(aligned[key])
        return out

    return align_batch


def column_names(dataset: Any) -> list[str]:
    """A dataset's column names; a stream whose schema is unknown until read is asked for its first row."""
    names = dataset.column_names
    if names is None:
        names = list(next(iter(dataset)).keys())
    return list(names)


def align_dataset(dataset: "Dataset | IterableDataset", spec: DatasetSpec, num_proc: int | None = None) -> Any:
    """The dataset's rows as standard rows; malformed rows are dropped with one counted warning (a stream, which
    cannot be counted up front, is aligned lazily and reports each skipped row as it passes)."""
    from datasets import IterableDataset, Value

    streaming = isinstance(dataset, IterableDataset)
    columns = column_names(dataset)
    check_columns(columns, spec)
    features = standard_features()
    features[SKIP_COLUMN] = Value("string")
    cache = {} if streaming else dict(desc=f"Aligning {spec.name}", num_proc=num_proc,
                                      new_fingerprint=map_fingerprint(dataset, "align", spec))
    aligned = dataset.map(align_batch_fn(spec), batched=True, remove_columns=columns, features=features, **cache)
    if streaming:
        def keep(reason: str) -> bool:
            if reason:
                log.warning("skipped a row of %s: %s", spec.path, reason)
            return not reason

        return aligned.filter(keep, input_columns=SKIP_COLUMN).remove_columns(SKIP_COLUMN)
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
