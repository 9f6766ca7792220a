"""Batching: pad token lists into tensors, one collator per data objective (the batch formats stages read).

Hand-written rather than transformers' DataCollatorForSeq2Seq / TRL's collators: those pad through
``tokenizer.pad`` (which needs a pad token set on the tokenizer object) or expect their trainers' column names;
these need only an id and produce exactly the contract below.

* supervised / pretrain (:class:`PaddingCollator`): ``input_ids``, ``attention_mask``, ``labels`` [B, T], right
  padded, labels -100 where there is no loss.
* pairwise (:class:`PairwiseCollator`): the same keys over 2n rows, first the n chosen then the n rejected
  (prompt + reply, labels on the reply only).
* kto (:class:`KTOCollator`): the (prompt, completion) rows as above, ``kto_tags`` BoolTensor[n] (True =
  desirable), and ``kl_input_ids``/``kl_attention_mask``/``kl_labels``: prompt i with the completion of row i-1
  (TRL's mismatched pairs for the KL reference point).
* prompt (:class:`PromptCollator`): ``input_ids``/``attention_mask`` LEFT padded, and ``labels_text`` (the reference
  replies) when asked for.

Media paths (``images``/``videos``/``audios``), when a batch has any, come through as lists of path lists per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lit_factory.data.tokenize import IGNORE_INDEX, MEDIA


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int, multiple_of: int | None = None,
             label_pad_id: int = IGNORE_INDEX, left: bool = False) -> dict[str, Any]:
    """``(input_ids, labels)`` rows -> padded ``input_ids``/``attention_mask``/``labels`` LongTensors."""
    import torch

    length = max(len(ids) for ids, _ in rows)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    batch = {
        "input_ids": torch.full((len(rows), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), length), dtype=torch.long),
        "labels": torch.full((len(rows), length), label_pad_id, dtype=torch.long),
    }
    for row, (ids, labels) in enumerate(rows):
        span = slice(length - len(ids), length) if left else slice(0, len(ids))
        batch["input_ids"][row, span] = torch.as_tensor(ids, dtype=torch.long)
        batch["attention_mask"][row, span] = 1
        batch["labels"][row, span] = torch.as_tensor(labels, dtype=torch.long)
    return batch


def _media(features: list[dict[str, Any]]) -> dict[str, list]:
    return {key: [f.get(key) or [] for f in features] for key in MEDIA if any(f.get(key) for f in features)}


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids``/``labels`` to the longest example and builds ``attention_mask``.

    Args:
        pad_token_id: the id written on padding positions of ``input_ids``.
        pad_to_multiple_of: round the padded length up to a multiple of this (8 or 64 help tensor cores).
        label_pad_id: the label on padding positions (-100: no loss).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    label_pad_id: int = IGNORE_INDEX

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # Pretraining blocks carry no labels column: every token is its own target.
        rows = [(f["input_ids"], f.get("labels", f["input_ids"])) for f in features]
        return {**pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of, self.label_pad_id), **_media(features)}


def _reply_row(prompt: list[int], reply: list[int]) -> tuple[list[int], list[int]]:
    return prompt + reply, [IGNORE_INDEX] * len(prompt) + reply


@dataclass
class PairwiseCollator:
    """Preference batches: n chosen rows, then the same n prompts with their rejected replies.

    Args:
        pad_token_id: the id written on padding positions.
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [_reply_row(f["prompt_ids"], f["chosen_ids"]) for f in features]
        rows += [_reply_row(f["prompt_ids"], f["rejected_ids"]) for f in features]
        return {**pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of), **_media(features)}


@dataclass
class KTOCollator:
    """KTO batches: (prompt, completion) rows, their desirability flags, and mismatched pairs for the KL term.

    Args:
        pad_token_id: the id written on padding positions.
        cutoff_len: the most tokens of a mismatched (KL) row; its completion is cut to fit.
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    pad_token_id: int
    cutoff_len: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pad_rows([_reply_row(f["prompt_ids"], f["completion_ids"]) for f in features], self.pad_token_id,
                         self.pad_to_multiple_of)
        # Prompt i with the completion of row i-1, as TRL's KTO trainer shifts them.
        kl_rows = []
        for index, feature in enumerate(features):
            completion = features[index - 1]["completion_ids"]
            kl_rows.append(_reply_row(feature["prompt_ids"],
                                      completion[: max(0, self.cutoff_len - len(feature["prompt_ids"]))]))
        kl = pad_rows(kl_rows, self.pad_token_id, self.pad_to_multiple_of)
        batch.update({f"kl_{key}": value for key, value in kl.items()})
        batch["kto_tags"] = torch.tensor([bool(f["kto_tag"]) for f in features], dtype=torch.bool)
        return {**batch, **_media(features)}


@dataclass
class PromptCollator:
    """Left-padded prompts for generation (PPO rollouts, predict).

    Args:
        pad_token_id: the id written on padding positions.
        with_labels_text: add ``labels_text``, the reference replies (for predict).
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    pad_token_id: int
    with_labels_text: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [(f["prompt_ids"], f["prompt_ids"]) for f in features]
        batch = pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of, left=True)
        del batch["labels"]
        if self.with_labels_text:
            batch["labels_text"] = [f.get("response", "") for f in features]
        return {**batch, **_media(features)}
