"""The data module end to end on LLaMA-Factory's demo datasets with the real Qwen2.5 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.data.tokenize import IGNORE_INDEX

DEMO_SETS = ["alpaca_en_demo", "alpaca_zh_demo", "identity", "glaive_toolcall_en_demo"]


def make(peer_data_dir, tokenizer, dataset, **kwargs) -> DataModule:
    kwargs = {"template": "qwen", "cutoff_len": 256, "batch_size": 4, "max_samples": 12, **kwargs}
    module = DataModule(dataset, dataset_dir=str(peer_data_dir), tokenizer=tokenizer, **kwargs)
    module.setup("fit")
    return module


def check_batch(batch: dict, pad_id: int, cutoff_len: int) -> None:
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    input_ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert all(t.dtype == torch.long and t.shape == input_ids.shape for t in batch.values())
    assert 0 < input_ids.shape[1] <= cutoff_len
    lengths = attention.sum(dim=1)
    assert lengths.max() == input_ids.shape[1]  # padded to the longest row, no further
    for row, length in enumerate(lengths.tolist()):
        # Right padding: ones then zeros; pad id and -100 labels on the padding.
        assert attention[row].tolist() == [1] * length + [0] * (input_ids.shape[1] - length)
        assert (input_ids[row, length:] == pad_id).all()
        assert (labels[row, length:] == IGNORE_INDEX).all()
        # Labels are either -100 or the token at the same position, and every row has some.
        loss = labels[row] != IGNORE_INDEX
        assert loss.any()
        assert (labels[row][loss] == input_ids[row][loss]).all()


@pytest.mark.parametrize("dataset", DEMO_SETS)
def test_demo_sets_load_align_and_batch(dataset, peer_data_dir, qwen_tokenizer):
    module = make(peer_data_dir, qwen_tokenizer, dataset, val_size=0.25)
    assert len(module.train_set) == 9 and len(module.val_set) == 3
    assert module.template.name == "qwen" and module.tokenizer is qwen_tokenizer
    for loader in (module.train_dataloader(), module.val_dataloader()):
        batches = list(loader)
        assert sum(len(b["input_ids"]) for b in batches) == len(loader.dataset)
        for batch in batches:
            check_batch(batch, qwen_tokenizer.pad_token_id, cutoff_len=256)


def loss_texts(module, tokenizer) -> list[str]:
    """The decoded loss-bearing tokens of every training example, in order (shuffle off)."""
    rows = [row for batch in module.train_dataloader() for row in batch["labels"]]
    return [tokenizer.decode(row[row != IGNORE_INDEX].tolist()) for row in rows]


def test_alpaca_labels_are_the_reference_outputs(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())[:6]
    module = make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo", max_samples=6, cutoff_len=4096, shuffle=False)
    assert loss_texts(module, qwen_tokenizer) == [row["output"] + "<|im_end|>" for row in rows]


def test_sharegpt_labels_are_the_reference_replies(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "glaive_toolcall_en_demo.json").read_text())[:6]
    module = make(peer_data_dir, qwen_tokenizer, "glaive_toolcall_en_demo", max_samples=6, cutoff_len=4096,
                  shuffle=False)
    def reply(turn: dict) -> str:
        if turn["from"] == "gpt":
            return turn["value"]
        # A tool call as Qwen's official template writes it (name, then arguments through `tojson`).
        call = json.loads(turn["value"])
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        return f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {arguments}}}\n</tool_call>'

    replies = [[reply(t) for t in row["conversations"] if t["from"] in ("gpt", "function_call")] for row in rows]
    expected = ["".join(reply + "<|im_end|>" for reply in row_replies) for row_replies in replies]
    assert loss_texts(module, qwen_tokenizer) == expected


def test_datasets_are_concatenated_in_order(peer_data_dir, qwen_tokenizer):
    module = make(peer_data_dir, qwen_tokenizer, "identity, alpaca_en_demo", max_samples=3, shuffle=False)
    assert len(module.train_set) == 6
    first = qwen_tokenizer.decode(module.train_set[0]["input_ids"])
    fourth = qwen_tokenizer.decode(module.train_set[3]["input_ids"])
    identity = json.loads((peer_data_dir / "identity.json").read_text())[0]
    alpaca = json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())[0]
    assert f"<|im_start|>user\n{identity['instruction']}<|im_end|>" in first
    assert f"<|im_start|>user\n{alpaca['instruction']}" in fourth


def test_validation_split_is_deterministic(peer_data_dir, qwen_tokenizer):
    def val_ids(seed, val_size):
        module = make(peer_data_dir, qwen_tokenizer, "identity", max_samples=30, val_size=val_size, seed=seed)
        return [row["input_ids"] for row in module.val_set]

    assert len(val_ids(1, 5)) == 5  # a count
    assert len(val_ids(1, 0.2)) == 6  # a ratio
    assert val_ids(1, 0.2) == val_ids(1, 0.2)
    assert val_ids(1, 0.2) != val_ids(2, 0.2)


def test_no_validation_gives_an_empty_val_dataloader(peer_data_dir, qwen_tokenizer):
    module = make(peer_data_dir, qwen_tokenizer, "identity")
    assert module.val_set is None and module.val_dataloader() == []


def test_pretrain_blocks_on_c4_demo(peer_data_dir, qwen_tokenizer):
    cutoff = 64
    module = make(peer_data_dir, qwen_tokenizer, "c4_demo", objective="pretrain", cutoff_len=cutoff,
                  max_samples=8, shuffle=False)
    # Reference: the documents (the entry's prompt column is "text") + eos, concatenated, in blocks of 64.
    with open(peer_data_dir / "c4_demo.jsonl") as lines:
        texts = [json.loads(line)["text"] for line, _ in zip(lines, range(8))]
    stream = [t for text in texts for t in qwen_tokenizer.encode(text) + [qwen_tokenizer.eos_token_id]]
    assert len(module.train_set) == len(stream) // cutoff
    batches = list(module.train_dataloader())
    for batch in batches:
        assert batch["input_ids"].shape[1] == cutoff
        assert (batch["attention_mask"] == 1).all()
        assert torch.equal(batch["labels"], batch["input_ids"])
    assert batches[0]["input_ids"][1].tolist() == stream[cutoff : 2 * cutoff]


def test_tokenizer_given_as_a_path(peer_data_dir, shared_dir):
    module = make(peer_data_dir, str(shared_dir / "tokenizers" / "qwen2.5-instruct"), "identity", template="auto",
                  max_samples=4)
    assert module.template.name == "qwen"
    check_batch(next(iter(module.train_dataloader())), module.tokenizer.pad_token_id, cutoff_len=256)


def test_lightning_trainer_runs_with_and_without_validation(peer_data_dir, qwen_tokenizer):
    import lightning.pytorch as pl

    class Counter(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.val_batches = 0

        def training_step(self, batch, index):
            return self.weight.sum() + batch["input_ids"].float().mean() * 0

        def validation_step(self, batch, index):
            self.val_batches += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for val_size, expected_val_batches in ((0, 0), (4, 1)):
        model = Counter()
        trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
        trainer.fit(model, make(peer_data_dir, qwen_tokenizer, "identity", val_size=val_size))
        assert model.val_batches == expected_val_batches
