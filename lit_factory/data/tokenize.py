"""Standard rows -> token ids and labels: the loss mask of supervised fine-tuning and the blocks of pretraining.

Supervised: the template renders each exchange as (prompt, response, separator) text; each piece is tokenised on
its own (``add_special_tokens=False``) and the ids are concatenated, so the loss positions are exactly the response
pieces, with no guessing at token boundaries. (This matches tokenising the whole string whenever a piece boundary
is also a pre-tokenizer boundary, as it is after special tokens such as ``<|im_end|>``; the tests check it against
``apply_chat_template`` on LLaMA-Factory's demo sets. A reply that starts with whitespace right after a header that
ends with whitespace could tokenise differently; LLaMA-Factory tokenises piece by piece the same way.)

Truncation to ``cutoff_len`` (LLaMA-Factory's rule, so that datasets cut the same way in both): exchanges are kept
whole, in order, while they fit. The first exchange that does not fit shares what is left of the budget: if its
response is under half the budget the response stays whole and the prompt is cut; if the prompt is under half,
the prompt stays whole and the response is cut; otherwise both are cut in proportion to their lengths. Each keeps
its beginning. Later exchanges are dropped, and so is an exchange that would keep no response token (where
LLaMA-Factory would still append a piece of its prompt, which carries no loss). An example that ends with no loss
token at all is dropped from the dataset (counted in a warning).

Pretrain: every document is tokenised, followed by the eos token, the documents are concatenated and the stream is
cut into blocks of exactly ``cutoff_len`` tokens; the remainder of each map batch (1,000 documents) is dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lit_factory.data.caching import map_fingerprint
from lit_factory.data.templates import Message, Template
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and Hugging Face models) skip


def special_tokens(tokenizer: Any) -> tuple[str, str]:
    """The tokenizer's bos and eos strings, empty where it has none (they fill a template's {bos}/{eos})."""
    return getattr(tokenizer, "bos_token", None) or "", getattr(tokenizer, "eos_token", None) or ""


def fit_turn(source_len: int, target_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens of one exchange to keep in ``budget`` tokens (see the module doc)."""
    if source_len + target_len <= budget:
        return source_len, target_len
    if target_len * 2 < budget:
        kept_target = target_len
    elif source_len * 2 < budget:
        kept_target = budget - source_len
    else:
        kept_target = int(budget * target_len / (source_len + target_len))
    kept_target = min(kept_target, target_len)
    return min(budget - kept_target, source_len), kept_target


def encode_supervised(
    messages: list[Message],
    tokenizer: Any,
    template: Template,
    cutoff_len: int,
    train_on_prompt: bool = False,
    system: str | None = None,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are ``-100`` except on the assistant replies.

    Args:
        messages: alternating user/assistant messages ending with an assistant one (a leading system message is
            used as the system prompt when ``system`` is None).
        tokenizer: a Hugging Face tokenizer.
        template: the chat format.
        cutoff_len: the most tokens to keep (see the module doc for what is cut).
        train_on_prompt: put the loss on every token, prompts included.
        system: the system prompt; empty or None means the template's default.
    """
    bos_token, eos_token = special_tokens(tokenizer)
    turns = template.render_turns(messages, system, bos_token, eos_token)
    pieces = [piece for turn in turns for piece in turn]
    encoded = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for index in range(len(turns)):
        budget = cutoff_len - len(input_ids)
        if budget <= 0:
            break
        prompt_ids, response_ids, separator_ids = encoded[3 * index : 3 * index + 3]
        target_ids = response_ids + separator_ids
        source_len, target_len = fit_turn(len(prompt_ids), len(target_ids), budget)
        if target_len == 0:
            break
        target_labels = target_ids if train_on_prompt else response_ids + [IGNORE_INDEX] * len(separator_ids)
        prompt_labels = prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
        input_ids += prompt_ids[:source_len] + target_ids[:target_len]
        labels += prompt_labels[:source_len] + target_labels[:target_len]
    return input_ids, labels


def pack_pretrain_blocks(texts: list[str], tokenizer: Any, cutoff_len: int) -> list[list[int]]:
    """Documents + eos, concatenated and cut into blocks of exactly ``cutoff_len`` tokens (remainder dropped)."""
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise LitFactoryError(
            "data.tokenizer: the tokenizer has no eos token, which pretraining puts between documents. "
            "Fix: use a tokenizer with an eos token."
        )
    texts = [text for text in texts if text]
    stream = [token for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for token in ids + [eos_id]]
    usable = len(stream) // cutoff_len * cutoff_len
    return [stream[start : start + cutoff_len] for start in range(0, usable, cutoff_len)]


def tokenize_supervised_dataset(
    dataset: "Dataset", tokenizer: Any, template: Template, cutoff_len: int, train_on_prompt: bool, name: str
) -> "Dataset":
    """Standard rows -> ``input_ids`` and ``labels`` columns; rows left with no loss token are dropped."""

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": []}
        for messages, system in zip(batch["messages"], batch["system"]):
            input_ids, labels = encode_supervised(messages, tokenizer, template, cutoff_len, train_on_prompt, system)
            if any(label != IGNORE_INDEX for label in labels):
                out["input_ids"].append(input_ids)
                out["labels"].append(labels)
        return out

    settings = ("supervised", template, cutoff_len, train_on_prompt)
    tokenized = dataset.map(
        encode_batch, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {name}",
        new_fingerprint=map_fingerprint(dataset, *settings, tokenizer=tokenizer),
    )
    if len(tokenized) < len(dataset):
        log.warning(
            "skipped %d of %d rows of %s: no response token fits in cutoff_len=%d",
            len(dataset) - len(tokenized), len(dataset), name, cutoff_len,
        )
    return tokenized


def tokenize_pretrain_dataset(dataset: "Dataset", tokenizer: Any, cutoff_len: int, name: str) -> "Dataset":
    """A ``text`` column -> ``input_ids`` blocks of exactly ``cutoff_len`` tokens.

    No ``labels`` column: every token is a target, so the collator copies ``input_ids`` (half the disk cache).
    """

    def pack_batch(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": pack_pretrain_blocks(batch["text"], tokenizer, cutoff_len)}

    return dataset.map(
        pack_batch, batched=True, batch_size=1000, remove_columns=dataset.column_names, desc=f"Packing {name}",
        new_fingerprint=map_fingerprint(dataset, "pretrain", cutoff_len, tokenizer=tokenizer),
    )
