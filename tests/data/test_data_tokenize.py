"""Truncation, train_on_prompt, pretraining blocks and padding, against independent references."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from lit_factory.data.collators import PaddingCollator
from lit_factory.data.templates import get_template
from lit_factory.data.tokenize import (
    IGNORE_INDEX, assemble_supervised, encode_supervised, fit_turn, pack_pretrain_blocks,
)

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


def llamafactory_supervised(pairs, cutoff_len, train_on_prompt, mask_history, keep_prompt_end=False):
    """LLaMA-Factory's SupervisedDatasetProcessor._encode_data_example (processor/supervised.py), rewritten over
    (source_ids, target_ids, target_loss_labels) pairs: the template decides which target tokens carry loss (ours
    leaves the separator without), the processor decides order, truncation and masking. ``keep_prompt_end``: the
    one change ``truncation_side: left`` makes (a cut source keeps its end)."""
    input_ids, labels, total_length = [], [], 0
    if mask_history:
        pairs = pairs[::-1]  # high priority for last turns
    for turn_idx, (source_ids, target_ids, target_loss) in enumerate(pairs):
        if total_length >= cutoff_len:
            break
        source_len, target_len = llamafactory_infer_seqlen(len(source_ids), len(target_ids),
                                                           cutoff_len - total_length)
        source_ids = source_ids[len(source_ids) - source_len :] if keep_prompt_end else source_ids[:source_len]
        target_ids = target_ids[:target_len]
        total_length += source_len + target_len
        source_label = source_ids if train_on_prompt else [IGNORE_INDEX] * source_len
        if mask_history and turn_idx != 0:
            target_label = [IGNORE_INDEX] * target_len
        else:
            target_label = target_ids if train_on_prompt else target_loss[:target_len]
        if mask_history:
            input_ids = source_ids + target_ids + input_ids
            labels = source_label + target_label + labels
        else:
            input_ids += source_ids + target_ids
            labels += source_label + target_label
    return input_ids, labels


def test_fit_turn_matches_llamafactory():
    for source, target, budget in itertools.product(range(0, 40, 3), range(0, 40, 3), range(1, 60, 4)):
        assert fit_turn(source, target, budget) == llamafactory_infer_seqlen(source, target, budget)
    # LLaMA-Factory rounds int(budget * (target / total)); int(budget * target / total) would keep 15 here.
    assert fit_turn(14, 30, 22) == llamafactory_infer_seqlen(14, 30, 22) == (8, 14)


def random_dialogue(rng: random.Random, cutoff_len: int) -> list[list[int]]:
    """(prompt, response, separator) ids of a random dialogue, often longer than ``cutoff_len``; distinct ids so
    that a token kept from the wrong place shows."""
    pieces, next_id = [], 0
    for _ in range(rng.randint(1, 6)):
        for length in (rng.randint(1, cutoff_len), rng.randint(0, cutoff_len), rng.choice([0, 1, 2])):
            pieces.append(list(range(next_id, next_id + length)))
            next_id += length
    return pieces


@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_supervised_truncation_matches_llamafactory_on_random_dialogues(truncation_side):
    rng = random.Random(0)
    cases = 0
    kept_last_reply = {True: 0, False: 0}
    for _ in range(3000):
        cutoff_len = rng.randint(1, 300)
        pieces = random_dialogue(rng, cutoff_len)
        pairs = [(p, r + s, r + [IGNORE_INDEX] * len(s)) for p, r, s in zip(pieces[::3], pieces[1::3], pieces[2::3])]
        for train_on_prompt, mask_history in itertools.product([False, True], repeat=2):
            expected = llamafactory_supervised(pairs, cutoff_len, train_on_prompt, mask_history,
                                               keep_prompt_end=truncation_side == "left")
            got = assemble_supervised(pieces, cutoff_len, train_on_prompt, mask_history, truncation_side)
            assert got == expected, (pieces, cutoff_len, train_on_prompt, mask_history)
            assert len(got[0]) <= cutoff_len
            cases += 1
            if not train_on_prompt and pieces[-2]:  # the last reply has tokens: does any reach the loss?
                kept_last_reply[mask_history] += any(t in pieces[-2] for t in got[1])
    assert cases == 12000
    # Fitting the last exchange first keeps the reply that carries the loss far more often than in-order fitting.
    assert kept_last_reply[True] > 1.5 * kept_last_reply[False]


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


def test_turn_without_room_for_a_reply_is_kept_as_context(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), (p2, _, _) = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    first_len = len(p1) + len(r1) + len(s1)
    input_ids, labels = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff_len=first_len + 1)
    # One token of budget left: LLaMA-Factory keeps one prompt token of turn 2, with no loss.
    assert input_ids == p1 + r1 + s1 + p2[:1]
    assert labels[-1] == IGNORE_INDEX and labels[first_len - len(s1) - len(r1) : first_len - len(s1)] == r1


def test_mask_history_fits_the_last_exchange_first(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), (p2, r2, s2) = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    cutoff = len(p2) + len(r2) + len(s2) + 10  # the last exchange whole and ten tokens of the first
    input_ids, labels = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff_len=cutoff, mask_history=True)
    kept_prompt, kept_target = llamafactory_infer_seqlen(len(p1), len(r1) + len(s1), 10)
    assert input_ids == p1[:kept_prompt] + (r1 + s1)[:kept_target] + p2 + r2 + s2
    assert labels == [IGNORE_INDEX] * (10 + len(p2)) + r2 + [IGNORE_INDEX] * len(s2)
    # In-order fitting would have spent the budget on the first exchange and kept no reply to learn from.
    assert len(p1) + len(r1) + len(s1) + len(p2) >= cutoff


def test_truncation_side_left_keeps_the_end_of_a_long_prompt(qwen_tokenizer):
    template = get_template("qwen")
    (p1, r1, s1), _ = piece_ids(qwen_tokenizer, template, LONG_TURNS)
    cutoff = 40
    kept_prompt, kept_target = llamafactory_infer_seqlen(len(p1), len(r1) + len(s1), cutoff)
    input_ids, _ = encode_supervised(LONG_TURNS, qwen_tokenizer, template, cutoff, truncation_side="left")
    assert 0 < kept_prompt < len(p1)
    assert input_ids == p1[-kept_prompt:] + (r1 + s1)[:kept_target]


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
