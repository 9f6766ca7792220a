"""SFT packing: several conversations per row, with no attention across them and positions restarting, gives the
same per-conversation loss as running each conversation alone (the reference: a plain transformers forward)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_factory.data.datamodule import DataModule
from lit_factory.data.packing import PackedCollator, attention_inputs, pack_rows
from lit_factory.data.tokenize import IGNORE_INDEX


def tiny_model(kind: str, vocab_size: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(kind, vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, attn_implementation="sdpa")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy (0 where the next label is -100)."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return F.cross_entropy(logits.float().transpose(-1, -2), targets, ignore_index=IGNORE_INDEX, reduction="none")


def test_pack_rows_restarts_positions_and_fills_in_order():
    packed = pack_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [[-100, 2, 3], [-100, 5], [6, 7, 8, 9]], cutoff_len=6)
    assert packed["input_ids"] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert packed["position_ids"] == [[0, 1, 2, 0, 1], [0, 1, 2, 3]]
    assert packed["labels"] == [[-100, 2, 3, -100, 5], [6, 7, 8, 9]]


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_packed_loss_equals_one_by_one(kind, peer_data_dir, qwen_tokenizer):
    module = DataModule("identity", dataset_dir=str(peer_data_dir), tokenizer=qwen_tokenizer, template="qwen",
                        cutoff_len=256, max_samples=12, batch_size=2, packing=True, shuffle=False)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "position_ids"}
    starts = (batch["position_ids"] == 0) & batch["attention_mask"].bool()
    assert (starts.sum(dim=1) > 1).all()  # each row really holds several conversations

    model = tiny_model(kind, len(qwen_tokenizer))
    with torch.no_grad():
        # As the SFT stage calls it: position ids, no 2D mask, no cache.
        packed = model(input_ids=batch["input_ids"], **attention_inputs(batch)).logits
        packed_losses = token_losses(packed, batch["labels"])
        for row in range(batch["input_ids"].shape[0]):
            begins = starts[row].nonzero().flatten().tolist()
            ends = begins[1:] + [int(batch["attention_mask"][row].sum())]
            for begin, end in zip(begins, ends):
                ids = batch["input_ids"][row, begin:end][None]
                labels = batch["labels"][row, begin:end][None]
                alone = token_losses(model(input_ids=ids).logits, labels)[0]
                # The last token's target in the packed row is the next conversation's first token: no loss there
                # either way, because every conversation starts with a -100 prompt token.
                torch.testing.assert_close(packed_losses[row, begin:end], alone, atol=1e-5, rtol=1e-4)
        # Without the position ids (plain causal attention over the row) the later conversations differ.
        unpacked = token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        assert not torch.allclose(unpacked, packed_losses, atol=1e-3)


def test_packed_collator_pads_positions_as_a_sequence_of_their_own():
    batch = PackedCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
        {"input_ids": [8], "labels": [8], "position_ids": [0]},
    ])
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
