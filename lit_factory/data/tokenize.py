"""Standard rows -> token ids and labels, for each data objective (:mod:`lit_factory.data.objectives`).

Supervised: the template renders each exchange as (prompt, response, separator) text. The whole conversation is
tokenised in one call, as ``apply_chat_template`` does, and each token is assigned to the piece its first character
falls in (the fast tokenizer's offsets), so the ids equal the reference tokenisation and the loss positions are
exactly the response pieces. (Tokenising each piece on its own would add a word-start marker at every piece with
SentencePiece tokenizers such as Mistral's.) Slow tokenizers without offsets fall back to piece-by-piece
tokenisation.

Truncation to ``cutoff_len`` is LLaMA-Factory's (``infer_seqlen`` and its supervised, pairwise and feedback
processors, arithmetic included), so the same data and ``cutoff_len`` give the same examples in both. Exchanges are
fitted in order (with ``mask_history``: last exchange first, so the reply that carries the loss is the one kept
whole), each into what is left of the budget: if its target (reply + separator) is under half the budget it stays
whole and the prompt is cut; else if the prompt is under half it stays whole and the target is cut; else both are
cut, the target to ``int(budget * (target / (prompt + target)))`` tokens. A response keeps its beginning; a prompt
keeps its beginning too (``truncation_side="right"``, LLaMA-Factory's) or its end (``"left"``, next to the reply it
prompts, as TRL's ``keep_end``). An exchange whose prompt is cut with no room left for its reply is kept, labels
-100; fitting stops when the budget is spent. An example that ends with no loss token at all is dropped from the
dataset (counted in a warning). ``mask_history`` keeps the loss on the last reply only (with ``train_on_prompt``
the prompts keep theirs, as in LLaMA-Factory).

Pairwise (ranking rows): the prompt (every message, up to the generation prompt) and each of the two replies are
stored apart: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``; the same rule cuts prompt and the longer reply, and
both replies to the same length budget (as LLaMA-Factory). KTO: ``prompt_ids``, ``completion_ids`` (the last reply)
and ``kto_tag``. Prompt: ``prompt_ids`` and the reference reply as text (``response``, "" when none). The collators
put these together.

Pretrain: every document is tokenised, followed by the eos token, the documents are concatenated and the stream is
cut into blocks of exactly ``cutoff_len`` tokens; the remainder of each map batch (1,000 documents) is dropped.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable

from lit_factory.data.templates import AnyTemplate, Message
from lit_factory.errors import LitFactoryError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and Hugging Face models) skip
MEDIA = ("images", "videos", "audios")


def special_tokens(tokenizer: Any) -> tuple[str, str]:
    """The tokenizer's bos and eos strings, empty where it has none (they fill a template's {bos}/{eos})."""
    return getattr(tokenizer, "bos_token", None) or "", getattr(tokenizer, "eos_token", None) or ""


def fit_turn(source_len: int, target_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens of one exchange to keep in ``budget`` tokens: LLaMA-Factory's
    ``infer_seqlen`` with its float arithmetic (``int(budget * (target / total))``), so the splits agree exactly."""
    if target_len * 2 < budget:
        max_target_len = budget
    elif source_len * 2 < budget:
        max_target_len = budget - source_len
    else:
        max_target_len = int(budget * (target_len / (source_len + target_len)))
    kept_target = min(max_target_len, target_len)
    return min(max(budget - kept_target, 0), source_len), kept_target


def cut_prompt(prompt_ids: list[int], kept: int, truncation_side: str) -> list[int]:
    """The ``kept`` tokens of a prompt: its beginning (``right``: the end is cut) or its end (``left``)."""
    return prompt_ids[:kept] if truncation_side == "right" else prompt_ids[len(prompt_ids) - kept :]


def tokenize_pieces(pieces: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each piece of a text cut into ``pieces``, from one tokenisation of the whole text."""
    return tokenize_pieces_batch([pieces], tokenizer)[0]


def tokenize_pieces_batch(texts: list[list[str]], tokenizer: Any) -> list[list[list[int]]]:
    """:func:`tokenize_pieces` for many texts in one tokenizer call (the fast tokenizer batches them in Rust)."""
    if not getattr(tokenizer, "is_fast", False):
        return [tokenizer(pieces, add_special_tokens=False)["input_ids"] for pieces in texts]
    encoded = tokenizer(["".join(pieces) for pieces in texts], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for pieces, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        starts, position = [], 0
        for piece in pieces:
            starts.append(position)
            position += len(piece)
        split: list[list[int]] = [[] for _ in pieces]
        for token, (begin, _) in zip(ids, offsets):
            # bisect_right - 1 finds the last piece starting at or before `begin`; empty pieces are skipped over.
            split[bisect_right(starts, begin) - 1].append(token)
        out.append(split)
    return out


def encode_supervised(
    messages: list[Message],
    tokenizer: Any,
    template: AnyTemplate,
    cutoff_len: int,
    train_on_prompt: bool = False,
    system: str | None = None,
    tools: str = "",
    mask_history: bool = False,
    truncation_side: str = "right",
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are ``-100`` except on the assistant replies.

    Args:
        messages: alternating user/assistant messages ending with an assistant one (a leading system message is
            used as the system prompt when ``system`` is None).
        tokenizer: a Hugging Face tokenizer.
        template: the chat format.
        cutoff_len: the most tokens to keep (see the module doc for what is cut).
        train_on_prompt: put the loss on every token, prompts included.
        system: the system prompt; None means the template's default ("" is an empty system prompt, written as such).
        tools: tool definitions (JSON list) shown to the model, "" for none.
        mask_history: loss on the last reply only (earlier replies are context); the last exchange is fitted first.
        truncation_side: which end of a prompt that must be cut is cut: ``right`` (keep its beginning) or ``left``.
    """
    bos_token, eos_token = special_tokens(tokenizer)
    turns = template.render_turns(messages, system, bos_token, eos_token, tools)
    encoded = tokenize_pieces([piece for turn in turns for piece in turn], tokenizer)
    return assemble_supervised(encoded, cutoff_len, train_on_prompt, mask_history, truncation_side)


def assemble_supervised(encoded: list[list[int]], cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False, truncation_side: str = "right") -> tuple[list[int], list[int]]:
    """Ids and labels from the (prompt, response, separator) ids of each exchange: truncation and loss mask, in
    the order and arithmetic of LLaMA-Factory's supervised processor (see the module doc)."""
    count = len(encoded) // 3
    # With mask_history the last exchange is fitted first and the earlier ones are put in front of it.
    order = range(count - 1, -1, -1) if mask_history else range(count)
    pieces: list[tuple[list[int], list[int]]] = []
    total = 0
    for index in order:
        if total >= cutoff_len:
            break
        prompt_ids, response_ids, separator_ids = encoded[3 * index : 3 * index + 3]
        target_ids = response_ids + separator_ids
        source_len, target_len = fit_turn(len(prompt_ids), len(target_ids), cutoff_len - total)
        total += source_len + target_len
        if mask_history and index < count - 1:
            target_labels = [IGNORE_INDEX] * len(target_ids)
        elif train_on_prompt:
            target_labels = target_ids
        else:
            target_labels = response_ids + [IGNORE_INDEX] * len(separator_ids)
        prompt_labels = prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
        pieces.append((cut_prompt(prompt_ids, source_len, truncation_side) + target_ids[:target_len],
                       cut_prompt(prompt_labels, source_len, truncation_side) + target_labels[:target_len]))
    if mask_history:
        pieces.reverse()
    return [t for ids, _ in pieces for t in ids], [t for _, labels in pieces for t in labels]


def encode_prompt_and_replies(
    messages: list[Message], replies: list[str | Message], tokenizer: Any, template: AnyTemplate, cutoff_len: int,
    system: str | None = None, tools: str = "", truncation_side: str = "right",
) -> tuple[list[int], list[list[int]]]:
    """The generation prompt of ``messages`` (ending with a user-side message) and each reply to it, as ids; the
    prompt and the longest reply share ``cutoff_len`` by the truncation rule (LLaMA-Factory's pairwise and feedback
    processors), every reply cut to the same length, the prompt on ``truncation_side``. A reply's length counts
    its separator, as the supervised target does (LLaMA-Factory's reply ends with it), though the row ends without
    it, so the cuts fall where LLaMA-Factory's do."""
    bos_token, eos_token = special_tokens(tokenizer)
    reply_ids = []
    target_lens = []
    prompt_ids: list[int] = []
    for reply in replies:
        full = messages + [reply if isinstance(reply, dict) else {"role": "assistant", "content": reply}]
        turns = template.render_turns(full, system, bos_token, eos_token, tools)
        history = "".join("".join(turn) for turn in turns[:-1]) + turns[-1][0]
        prompt_ids, ids, separator_ids = tokenize_pieces([history, turns[-1][1], turns[-1][2]], tokenizer)
        reply_ids.append(ids)
        target_lens.append(len(ids) + len(separator_ids))
    source_len, target_len = fit_turn(len(prompt_ids), max(target_lens), cutoff_len)
    return cut_prompt(prompt_ids, source_len, truncation_side), [ids[:target_len] for ids in reply_ids]


def encode_prompt(messages: list[Message], tokenizer: Any, template: AnyTemplate, cutoff_len: int,
                  system: str | None = None, tools: str = "") -> list[int]:
    """The generation prompt's ids (its last ``cutoff_len``: generation continues from its end)."""
    bos_token, eos_token = special_tokens(tokenizer)
    text = template.render_prompt(messages, system, bos_token, eos_token, tools)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-cutoff_len:]


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


@dataclass(frozen=True)
class Encoding:
    """What turns standard rows into token columns besides the objective: the tokenizer, the template, the truncation
    and masking settings, and (with an image plugin, see :mod:`lit_factory.data.media`) the plugin, the folder image
    paths are relative to and the name of the data in errors."""

    tokenizer: Any
    template: AnyTemplate | None
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    truncation_side: str = "right"
    image_plugin: Any = None
    media_dir: str = "."
    source: str = "dataset"


def encoder(objective: Any, encoding: Encoding) -> Callable[..., dict[str, list]]:
    """The batched map function (``with_indices``) from standard rows to the token columns of ``objective`` (a
    :class:`lit_factory.data.objectives.Objective`, whose ``encode`` does the rows). Rows that keep no loss token
    are left out; media columns travel along. With an image plugin the ``<image>`` placeholders become the model's
    image tokens, the image paths are resolved against ``media_dir``, and rows whose image tokens ``cutoff_len`` would
    cut are left out (a cut image cannot be fed to the model)."""

    def encode_batch(batch: dict[str, list], indices: list[int] | None = None) -> dict[str, list]:
        # Every column present even when no row survives: `datasets` needs the same columns from every batch.
        out: dict[str, list] = {key: [] for key in list(objective.columns) + [k for k in MEDIA if k in batch]}
        images = None
        if encoding.image_plugin is not None:
            images = prepare_images(batch, indices, objective, encoding.image_plugin, encoding.media_dir,
                                    encoding.source)
        for row in objective.encode(batch, images, encoding):
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out

    return encode_batch


def prepare_images(batch: dict[str, list], indices: list[int] | None, objective: Any, media: Any, media_dir: str,
                   source: str) -> dict[str, list]:
    """Per row: the messages with their image placeholders expanded, the image paths made absolute and the number
    of image tokens expected (see :mod:`lit_factory.data.media`)."""
    from lit_factory.data.media import check_unsupported_media, resolve_media

    out: dict[str, list] = {"messages": [], "paths": [], "tokens": []}
    for i, messages in enumerate(batch["messages"]):
        where = f"{source} row {indices[i] if indices is not None else i}"
        check_unsupported_media(batch, i, where)
        paths = resolve_media(batch.get("images", [[]] * len(batch["messages"]))[i] or [], media_dir, where)
        if paths and not objective.images:
            raise LitFactoryError(f"{where} has images: image input is supported for supervised fine-tuning (SFT) "
                                  f"only yet, not the {objective} objective. Fix: use lit_factory.stages.SFT.")
        expanded, tokens = media.expand(messages, paths, where)
        out["messages"].append(expanded)
        out["paths"].append(paths)
        out["tokens"].append(tokens)
    return out
