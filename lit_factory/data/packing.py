"""SFT packing without cross-contamination: several tokenised conversations share one row of ``cutoff_len``.

Rows are filled greedily in order (a conversation that does not fit starts a new row) within each map batch of
1,000 conversations. Each row carries ``position_ids`` that restart at 0 for every conversation. The
:class:`PackedCollator` pads rows and leaves ``position_ids`` in the batch; a stage passes them to the model with
``attention_mask=None``, and transformers (``masking_utils.find_packed_sequence_indices``, for sdpa and eager) then
builds a block-diagonal causal mask from the restarts; flash-attention gets the boundaries as ``cu_seq_lens_*`` and
runs its varlen kernel (:func:`attention_inputs`). So no token attends across a conversation boundary, and each
conversation sees the positions it would see alone. The padding at the end of a row is one more "sequence" of its
own, with no loss.

No label crosses a boundary either: the loss predicts the label at position t from the logits at t - 1, so the
label of each conversation's first token would make the previous conversation's last token learn to predict it
(alone, that label is never used). :func:`pack_rows` writes -100 there, as transformers'
``DataCollatorWithFlattening`` does, so a packed row carries exactly the loss tokens of its conversations one by one,
in every mode (``train_on_prompt`` and ``mask_history`` included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lit_factory.data.collators import pad_rows
from lit_factory.data.tokenize import IGNORE_INDEX


def pack_rows(input_ids: list[list[int]], labels: list[list[int]], cutoff_len: int) -> dict[str, list]:
    """Greedy in-order packing of (ids, labels) sequences, each at most ``cutoff_len``, into rows of at most it;
    the first label of each sequence becomes -100 (the module doc says why)."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    row_ids: list[int] = []
    row_labels: list[int] = []
    row_positions: list[int] = []
    for ids, labs in zip(input_ids, labels):
        if row_ids and len(row_ids) + len(ids) > cutoff_len:
            out["input_ids"].append(row_ids)
            out["labels"].append(row_labels)
            out["position_ids"].append(row_positions)
            row_ids, row_labels, row_positions = [], [], []
        row_ids = row_ids + list(ids)
        # No target across the boundary (module doc): the first label is never used alone either.
        row_labels = row_labels + [IGNORE_INDEX] * min(1, len(labs)) + list(labs[1:])
        row_positions = row_positions + list(range(len(ids)))
    if row_ids:
        out["input_ids"].append(row_ids)
        out["labels"].append(row_labels)
        out["position_ids"].append(row_positions)
    return out


def pack_supervised(dataset: Any, cutoff_len: int, streaming: bool = False, num_proc: int | None = None) -> Any:
    """A tokenised supervised dataset (``input_ids``, ``labels``) as packed rows with ``position_ids``."""

    def pack_batch(batch: dict[str, list]) -> dict[str, list]:
        return pack_rows(batch["input_ids"], batch["labels"], cutoff_len)

    columns = dataset.column_names if not streaming else ["input_ids", "labels"]
    kwargs: dict[str, Any] = {} if streaming else {"desc": "Packing", "num_proc": num_proc}
    return dataset.map(pack_batch, batched=True, batch_size=1000, remove_columns=columns, **kwargs)


@dataclass
class PackedCollator:
    """Right-pads packed rows: ``input_ids``, ``attention_mask`` (1 on real tokens; for counting, the model gets
    None), ``labels`` and ``position_ids`` (padding continues counting from 0, a sequence of its own).

    Args:
        pad_token_id: the id written on padding positions.
        pad_to_multiple_of: round the padded length up to a multiple of this.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pad_rows([(f["input_ids"], f["labels"]) for f in features], self.pad_token_id,
                         self.pad_to_multiple_of, IGNORE_INDEX)
        length = batch["input_ids"].shape[1]
        positions = torch.zeros_like(batch["input_ids"])
        for row, feature in enumerate(features):
            used = len(feature["position_ids"])
            positions[row, :used] = torch.as_tensor(feature["position_ids"], dtype=torch.long)
            positions[row, used:] = torch.arange(length - used)
        batch["position_ids"] = positions
        return batch


def attention_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model's attention arguments for a batch: ``attention_mask`` for padded rows; for packed rows (they carry
    ``position_ids``) the position ids, no mask and no KV cache, the case in which transformers derives the
    per-sequence block-diagonal mask for sdpa and eager (it skips that when a mask or a cache is given), and the
    sequence boundaries of the flattened batch (``cu_seq_lens_q``... as ``DataCollatorWithFlattening`` gives them):
    flash-attention infers them from position ids only for a batch of one row, and would otherwise attend across
    the conversations of each row; sdpa and eager ignore them."""
    if "position_ids" in batch:
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (starts_q, starts_k), (longest_q, longest_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
        return {"position_ids": batch["position_ids"], "use_cache": False, "cu_seq_lens_q": starts_q,
                "cu_seq_lens_k": starts_k, "max_length_q": int(longest_q), "max_length_k": int(longest_k)}
    return {"attention_mask": batch["attention_mask"]}
