"""SFT packing: several conversations per row, with no attention across them and positions restarting, gives the
same per-conversation loss as running each conversation alone (the reference: a plain transformers forward)."""

from __future__ import annotations

import json

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
    # The first label of every conversation is dropped: the previous token must not learn to predict it.
    assert packed["labels"] == [[-100, 2, 3, -100, 5], [-100, 7, 8, 9]]


def short_dialogues(folder) -> str:
    """A dataset of short multi-turn conversations (several fit in one row), written into ``folder``."""
    rows = [{"conversations": [
        {"from": "human", "value": f"Question {i} number {turn}?"} if k == 0 else
        {"from": "gpt", "value": f"Answer {turn} to {i}: " + "word " * (i % 5 + turn)}
        for turn in range(1 + i % 3) for k in range(2)]} for i in range(18)]
    (folder / "dialogues.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps(
        {"dialogues": {"file_name": "dialogues.json", "formatting": "sharegpt"}}))
    return str(folder)


MODES = {"default": {}, "train_on_prompt": {"train_on_prompt": True}, "mask_history": {"mask_history": True},
         "both": {"train_on_prompt": True, "mask_history": True}}


@pytest.mark.parametrize(("kind", "mode"), [("qwen2", "default"), ("llama", "default"),
                                           ("qwen2", "train_on_prompt"), ("qwen2", "mask_history"),
                                           ("llama", "both")])
def test_packed_loss_equals_one_by_one(kind, mode, tmp_path, qwen_tokenizer):
    settings = {"tokenizer": qwen_tokenizer, "template": "qwen", "cutoff_len": 256, "shuffle": False,
                **MODES[mode]}
    alone_module = DataModule("dialogues", dataset_dir=short_dialogues(tmp_path), batch_size=1, **settings)
    alone_module.setup("fit")
    module = DataModule("dialogues", dataset_dir=str(tmp_path), batch_size=64, packing=True, **settings)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "position_ids"}
    starts = (batch["position_ids"] == 0) & batch["attention_mask"].bool()
    assert (starts.sum(dim=1) > 1).all()  # each row really holds several conversations
    conversations = [alone_module.train_set[i] for i in range(len(alone_module.train_set))]
    assert int(starts.sum()) == len(conversations) == 18

    # Ids renumbered onto the few used here: a 151k-row head would make this test minutes long on a CPU.
    used = sorted(set(batch["input_ids"].flatten().tolist()) | {t for c in conversations for t in c["input_ids"]})
    table = torch.full((max(used) + 1,), IGNORE_INDEX, dtype=torch.long)
    table[used] = torch.arange(len(used))

    def compact(ids: torch.Tensor) -> torch.Tensor:
        return torch.where(ids == IGNORE_INDEX, ids, table[ids.clamp(min=0)])

    batch = {**batch, "input_ids": compact(batch["input_ids"]), "labels": compact(batch["labels"])}
    model = tiny_model(kind, len(used))
    with torch.no_grad():
        # As the SFT stage calls it: position ids, no 2D mask, no cache.
        packed = model(input_ids=batch["input_ids"], **attention_inputs(batch)).logits
        packed_losses = token_losses(packed, batch["labels"])
        segments = []
        for row in range(batch["input_ids"].shape[0]):
            begins = starts[row].nonzero().flatten().tolist()
            ends = begins[1:] + [int(batch["attention_mask"][row].sum())]
            segments += [(row, begin, end) for begin, end in zip(begins, ends)]
        for (row, begin, end), conversation in zip(segments, conversations):
            # The reference: each conversation of the unpacked dataset, run alone with a plain forward.
            ids = compact(torch.tensor([conversation["input_ids"]]))
            labels = compact(torch.tensor([conversation["labels"]]))
            assert batch["input_ids"][row, begin:end].tolist() == ids[0].tolist()
            alone = token_losses(model(input_ids=ids).logits, labels)[0]
            # Every position, the last one included: its target would be the next conversation's first token.
            torch.testing.assert_close(packed_losses[row, begin:end], alone, atol=1e-5, rtol=1e-4)
        # The same loss tokens as one by one (a label on a conversation's first token is never a target alone).
        packed_targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert packed_targets == sum(sum(label != IGNORE_INDEX for label in c["labels"][1:]) for c in conversations)
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


def test_pretrain_blocks_follow_llamafactory_and_attend_across_documents(peer_data_dir, qwen_tokenizer):
    """Pre-training blocks are not conversations: documents + eos are one stream cut into blocks, as LLaMA-Factory's
    pretrain processor (and transformers' run_clm) do, so inside a block a document attends to the ones before it
    and its first token is the target of the eos before it. The documented rule, checked here: the blocks equal a
    re-implementation of LLaMA-Factory's, every token but a block's first is a target, and no position restarts."""
    rows = [json.loads(line)["text"] for line in (peer_data_dir / "c4_demo.jsonl").read_text().splitlines()][:40]
    module = DataModule("c4_demo", dataset_dir=str(peer_data_dir), tokenizer=qwen_tokenizer, objective="pretrain",
                        cutoff_len=128, max_samples=40, batch_size=4, shuffle=False)
    module.setup("fit")
    # LLaMA-Factory (processor/pretrain.py, packing on as for stage pt): text + eos token per document, tokenised
    # without special tokens, chained, the tail under one block dropped (Qwen has no bos to write at block starts).
    stream = [t for text in rows for t in qwen_tokenizer(text + qwen_tokenizer.eos_token,
                                                          add_special_tokens=False)["input_ids"]]
    blocks = [stream[i : i + 128] for i in range(0, len(stream) // 128 * 128, 128)]
    assert [module.train_set[i]["input_ids"] for i in range(len(module.train_set))] == blocks
    eos_inside = sum(block[:-1].count(qwen_tokenizer.eos_token_id) for block in blocks)
    assert eos_inside > 0  # some block holds a document boundary, with a target after it
    batch = next(iter(module.train_dataloader()))
    assert "position_ids" not in batch and batch["attention_mask"].all()
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 4 * 127


# ---- the SFT stage on packed rows, per attention implementation ---------------------------------------------------
class VarlenReference:
    """Flash-attention's dispatch on a CPU: transformers' own ``flash_attention_forward`` and
    ``_flash_attention_forward`` (which choose between the plain and the varlen kernel from the mask, the
    ``cu_seq_lens_*`` kwargs and the position ids) with the two kernels replaced by sdpa references, registered as
    an attention implementation of its own (flash-attn needs CUDA). ``varlen_calls`` counts the varlen kernel's calls
    and the sequences they were given."""

    name = "varlen_reference"

    def __init__(self, monkeypatch) -> None:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers import modeling_flash_attention_utils as fa
        from transformers.integrations.flash_attention import flash_attention_forward
        from transformers.masking_utils import flash_attention_mask

        self.varlen_calls: list[int] = []
        kernels = ((self.dense, self.varlen, None, None, None),
                   (fa._lazy_define_process_function(self.varlen), dict))
        original = fa.lazy_import_flash_attention
        monkeypatch.setattr(fa, "lazy_import_flash_attention",
                            lambda implementation, *args, **kwargs: kernels if implementation == self.name
                            else original(implementation, *args, **kwargs))
        AttentionInterface.register(self.name, flash_attention_forward)
        AttentionMaskInterface.register(self.name, flash_attention_mask)

    @staticmethod
    def dense(q, k, v, dropout_p=0.0, softmax_scale=None, causal=True, **kwargs):
        """flash_attn_func on (batch, length, heads, dim): causal attention over each whole row."""
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale, enable_gqa=True)
        return out.transpose(1, 2)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
               softmax_scale=None, causal=True, **kwargs):
        """flash_attn_varlen_func on (tokens, heads, dim): causal attention within each [cu[i], cu[i + 1])."""
        self.varlen_calls.append(len(cu_seqlens_q) - 1)
        bounds = cu_seqlens_q.tolist()
        return torch.cat([self.dense(q[None, b:e], k[None, b:e], v[None, b:e], softmax_scale=softmax_scale,
                                     causal=causal)[0] for b, e in zip(bounds[:-1], bounds[1:])])


@pytest.mark.parametrize("attn", ["sdpa", "eager", "varlen_reference"])
def test_sft_stage_loss_on_packed_rows_equals_the_conversations_alone(attn, tmp_path, monkeypatch):
    """Through the SFT stage itself, several packed rows per batch: sdpa and eager get a block-diagonal mask from
    transformers' find_packed_sequence_indices, flash-attention's dispatch takes its varlen kernel with one sequence
    per conversation (and one per padded tail); the stage's loss equals the token mean of each conversation's loss
    run alone. Control: flash-attention given the position ids alone (what a batch of more than one row got before)
    attends across conversations."""
    from functools import partial

    from transformers import masking_utils
    from tiny_models import SPARROW, TINY

    from lit_factory.model import Full, ModelArgs
    from lit_factory.stages import SFT

    found = []
    find = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices",
                        lambda position_ids: found.append(find(position_ids)) or found[-1])
    flash = VarlenReference(monkeypatch) if attn == "varlen_reference" else None
    settings = {"tokenizer": SPARROW, "template": "chatml", "cutoff_len": 512, "shuffle": False}
    module = DataModule("dialogues", dataset_dir=short_dialogues(tmp_path), batch_size=64, packing=True, **settings)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    alone_module = DataModule("dialogues", dataset_dir=str(tmp_path), batch_size=1, **settings)
    alone_module.setup("fit")
    conversations = [alone_module.train_set[i] for i in range(len(alone_module.train_set))]
    starts = (batch["position_ids"] == 0) & batch["attention_mask"].bool()
    assert batch["input_ids"].shape[0] > 1 and (starts.sum(dim=1) > 1).all()
    assert int(starts.sum()) == len(conversations)
    padded_rows = int((batch["attention_mask"] == 0).any(dim=1).sum())

    torch.manual_seed(0)
    stage = SFT(ModelArgs(config=dict(TINY, max_position_embeddings=512), tokenizer=SPARROW), Full(),
                partial(torch.optim.AdamW, lr=1e-3))
    stage.configure_model()
    stage.model.eval()
    if flash is not None:
        stage.model.set_attn_implementation(flash.name)
    with torch.no_grad():
        loss = stage.loss(batch)
        if flash is None:  # transformers found the conversations (and each padded tail) as sequences
            assert found and int(found[0].max(dim=1).values.sum() + len(found[0])) == len(conversations) + padded_rows
        else:
            assert flash.varlen_calls and set(flash.varlen_calls) == {len(conversations) + padded_rows}
        token_sum, targets = 0.0, 0
        for conversation in conversations:  # the reference: each conversation alone, a plain forward
            ids, labels = torch.tensor([conversation["input_ids"]]), torch.tensor([conversation["labels"]])
            token_sum += float(token_losses(stage.model(input_ids=ids).logits, labels).sum())
            targets += int((labels[:, 1:] != IGNORE_INDEX).sum())
        torch.testing.assert_close(float(loss), token_sum / targets, atol=1e-6, rtol=1e-5)
        if flash is not None:
            unbounded = stage.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
            packed = stage.model(input_ids=batch["input_ids"], **attention_inputs(batch))
            assert not torch.allclose(unbounded.logits, packed.logits, atol=1e-3)
