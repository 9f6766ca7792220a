"""Truncation, train_on_prompt, pretraining blocks and padding, against independent references."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from lit_factory.data.collators import PaddingCollator
from lit_factory.data.templates import get_template
from lit_factory.data.tokenize import IGNORE_INDEX, encode_supervised, fit_turn, pack_pretrain_blocks

LONG_TURNS = [
    {"role": "user", "content": "Tell me about rivers. " * 10},
    {"role": "assistant", "content": "Rivers carry water to the sea. " * 10},
    {"role": "user", "content": "And lakes?"},
    {"role": "assistant", "content": "Lakes hold still water. " * 10},
]


def llamafactory_infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's rule, copied from src/llamafactory/data/processor/processor_utils.py (the reference)."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def test_fit_turn_matches_llamafactory():
    for source, target, budget in itertools.product(range(0, 40, 3), range(1, 40, 3), range(1, 60, 4)):
        assert fit_turn(source, target, budget) == llamafactory_infer_seqlen(source, target, budget)


def piece_ids(tokenizer, template, messages):
    """The per-turn (prompt, response, separator) ids, tokenised independently of encode_supervised."""
    turns = template.render_turns(messages)
    return [[tokenizer.encode(piece, add_special_tokens=False) for piece in turn] for turn in turns]


def test_truncation_keeps_whole_turns_then_cuts_the_overflowing_one(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), (p2, r2, s2) = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    first_len = len(p1) + len(r1) + len(s1)
    cutoff = first_len + len(p2) + 5  # the second exchange does not fit: LLaMA-Factory's rule splits what is left
    input_ids, labels = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff_len=cutoff)
    kept_prompt, kept_target = llamafactory_infer_seqlen(len(p2), len(r2) + len(s2), cutoff - first_len)
    assert 0 < kept_target < len(r2)
    assert len(input_ids) == len(labels) == cutoff
    assert input_ids == p1 + r1 + s1 + p2[:kept_prompt] + r2[:kept_target]
    assert labels == (
        [IGNORE_INDEX] * len(p1) + r1 + [IGNORE_INDEX] * (len(s1) + kept_prompt) + r2[:kept_target]
    )


def test_truncation_of_a_long_first_turn_keeps_loss_tokens(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), _ = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    cutoff = 40  # shorter than the first prompt alone
    input_ids, labels = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff_len=cutoff)
    kept_prompt, kept_target = llamafactory_infer_seqlen(len(p1), len(r1) + len(s1), cutoff)
    assert kept_target > 0
    assert input_ids == p1[:kept_prompt] + (r1 + s1)[:kept_target]
    assert labels == [IGNORE_INDEX] * kept_prompt + (r1 + s1)[:kept_target]


def test_turn_without_room_for_a_reply_is_dropped(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), _ = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    first_len = len(p1) + len(r1) + len(s1)
    input_ids, _ = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff_len=first_len + 1)
    # One token of budget left: LLaMA-Factory would add one prompt token of turn 2; a prompt without its reply
    # teaches nothing, so we stop at the end of turn 1.
    assert input_ids == p1 + r1 + s1


def test_train_on_prompt_labels_every_token(qwen_tokenizer):
    template = get_template("qwen")
    input_ids, labels = encode_supervised(LONG_TURNS, qwen_tokenizer, template, 4096, train_on_prompt=True)
    assert labels == input_ids
    assert input_ids == encode_supervised(LONG_TURNS, qwen_tokenizer, template, 4096)[0]


def test_pretrain_blocks_are_documents_plus_eos_cut_to_size(qwen_tokenizer):
    texts = ["The first document.", "", "A second, longer document about tokenizers and blocks.", "Third."]
    stream = []
    for text in filter(None, texts):
        stream += qwen_tokenizer.encode(text, add_special_tokens=False) + [qwen_tokenizer.eos_token_id]
    blocks = pack_pretrain_blocks(texts, qwen_tokenizer, cutoff_len=7)
    assert blocks == [stream[i : i + 7] for i in range(0, len(stream) // 7 * 7, 7)]
    assert all(len(block) == 7 for block in blocks)


def test_padding_collator_right_pads():
    collate = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)
    batch = collate([
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [IGNORE_INDEX, IGNORE_INDEX, 10, 11, 12]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [-100, 6, 7, -100, -100, -100, -100, -100],
        [-100, -100, 10, 11, 12, -100, -100, -100],
    ]
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    # Pretraining blocks have no labels column: the inputs are their own labels.
    assert PaddingCollator(pad_token_id=0)([{"input_ids": [3, 4]}])["labels"].tolist() == [[3, 4]]


@pytest.mark.parametrize("pad_token_id, expected", [(None, 7), (3, 3)])
def test_pad_id_falls_back_to_eos(pad_token_id, expected):
    from lit_factory.data.datamodule import DataModule

    module = DataModule("x", tokenizer=SimpleNamespace(pad_token_id=pad_token_id, eos_token_id=7))
    assert module.pad_token_id == expected
