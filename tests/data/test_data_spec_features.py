"""The rest of the data spec: every demo set, media columns, OpenAI messages, num_samples, mixing, max_samples,
mask_history, streaming, the tokenised-dataset cache and multi-process preprocessing."""

from __future__ import annotations

import json
import logging

import pytest

from lit_factory.data import objectives, tokenize
from lit_factory.data.datamodule import DataModule
from lit_factory.data.tokenize import IGNORE_INDEX

# Every entry of the demo dataset_info.json whose file is there, with the objective it is made for.
DEMO_OBJECTIVES = {
    "identity": "supervised", "alpaca_en_demo": "supervised", "alpaca_zh_demo": "supervised",
    "glaive_toolcall_en_demo": "supervised", "glaive_toolcall_zh_demo": "supervised", "mllm_demo": "supervised",
    "dpo_en_demo": "pairwise", "dpo_zh_demo": "pairwise", "kto_en_demo": "kto", "wiki_demo": "pretrain",
    "c4_demo": "pretrain",
}


def make(folder, tokenizer, dataset, **kwargs) -> DataModule:
    kwargs = {"template": "qwen", "cutoff_len": 512, "batch_size": 4, "max_samples": 8, "shuffle": False, **kwargs}
    module = DataModule(dataset, dataset_dir=str(folder), tokenizer=tokenizer, **kwargs)
    module.setup("fit")
    return module


def write_data(folder, entries: dict, files: dict) -> None:
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    for name, rows in files.items():
        (folder / name).write_text(json.dumps(rows))


def test_every_demo_set_with_a_file_loads_aligns_and_tokenizes(peer_data_dir, qwen_tokenizer):
    info = json.loads((peer_data_dir / "dataset_info.json").read_text())
    local = {name for name, entry in info.items() if "file_name" in entry and (peer_data_dir / entry["file_name"]).exists()}
    assert local == set(DEMO_OBJECTIVES)
    for name, objective in DEMO_OBJECTIVES.items():
        module = make(peer_data_dir, qwen_tokenizer, name, objective=objective, cutoff_len=128)
        batch = next(iter(module.train_dataloader()))
        assert batch["input_ids"].shape[0] == (8 if objective == "pairwise" else 4), name
        assert (batch["labels"] != IGNORE_INDEX).any(), name


def test_mllm_image_paths_are_carried_to_the_batch(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "mllm_demo.json").read_text())[:4]
    batch = next(iter(make(peer_data_dir, qwen_tokenizer, "mllm_demo").train_dataloader()))
    assert batch["images"] == [row["images"] for row in rows]
    assert "<image>" in qwen_tokenizer.decode(batch["input_ids"][0])  # the placeholder text stays in the prompt


def test_openai_messages_with_tool_calls_need_no_tags(tmp_path, qwen_tokenizer):
    call = {"id": "1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}
    rows = [{"messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "1+2?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
    ], "tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}]}]
    write_data(tmp_path, {"chat": {"file_name": "chat.json", "formatting": "sharegpt",
                                   "columns": {"messages": "messages", "tools": "tools"}}}, {"chat.json": rows})
    module = make(tmp_path, qwen_tokenizer, "chat", cutoff_len=4096)
    expected = qwen_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "1+2?"},
         {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
             "name": "add", "arguments": {"a": 1, "b": 2}}}]},
         {"role": "tool", "content": "3"}, {"role": "assistant", "content": "It is 3."}],
        tools=rows[0]["tools"], tokenize=False)
    row = module.train_set[0]
    assert qwen_tokenizer.decode(row["input_ids"]) == expected
    loss = qwen_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert loss == '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>It is 3.<|im_end|>'


def test_num_samples_under_and_over_samples_with_a_seed(tmp_path, qwen_tokenizer):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    write_data(tmp_path, {"few": {"file_name": "d.json", "num_samples": 3},
                          "many": {"file_name": "d.json", "num_samples": 12}}, {"d.json": rows})

    def outputs(name, seed=42):
        module = make(tmp_path, qwen_tokenizer, name, max_samples=None, seed=seed)
        return [qwen_tokenizer.decode([t for t in r["labels"] if t != IGNORE_INDEX]) for r in module.train_set]

    few, many = outputs("few"), outputs("many")
    assert len(few) == 3 and len(set(few)) == 3
    assert len(many) == 12 and all(many.count(f"a{i}<|im_end|>") in (2, 3) for i in range(5))
    assert outputs("few", seed=1) != few or outputs("few", seed=2) != few


def test_mixing_concat_and_interleave(peer_data_dir, qwen_tokenizer):
    concat = make(peer_data_dir, qwen_tokenizer, "identity,alpaca_en_demo", max_samples=4)
    assert len(concat.train_set) == 8
    under = make(peer_data_dir, qwen_tokenizer, "identity,alpaca_en_demo", max_samples=4,
                 mix_strategy="interleave_under", interleave_probs=[0.5, 0.5])
    over = make(peer_data_dir, qwen_tokenizer, "identity,alpaca_en_demo", max_samples=4,
                mix_strategy="interleave_over", interleave_probs=[0.5, 0.5])
    assert len(under.train_set) < 8 < len(over.train_set)
    identity_prompt = json.loads((peer_data_dir / "identity.json").read_text())[0]["instruction"]
    texts = [qwen_tokenizer.decode(row["input_ids"]) for row in under.train_set]
    assert any(identity_prompt in text for text in texts) and not all(identity_prompt in text for text in texts)
    again = make(peer_data_dir, qwen_tokenizer, "identity,alpaca_en_demo", max_samples=4,
                 mix_strategy="interleave_under", interleave_probs=[0.5, 0.5])
    assert again.train_set["input_ids"] == under.train_set["input_ids"]  # seeded


def test_mask_history_keeps_only_the_last_reply(peer_data_dir, qwen_tokenizer):
    module = make(peer_data_dir, qwen_tokenizer, "glaive_toolcall_en_demo", max_samples=1, cutoff_len=4096,
                  mask_history=True)
    row = json.loads((peer_data_dir / "glaive_toolcall_en_demo.json").read_text())[0]
    loss = qwen_tokenizer.decode([t for t in module.train_set[0]["labels"] if t != IGNORE_INDEX])
    assert loss == row["conversations"][-1]["value"] + "<|im_end|>"


def test_streaming_gives_the_same_rows(peer_data_dir, qwen_tokenizer):
    stored = make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo,identity", max_samples=6)
    streamed = make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo,identity", max_samples=6, streaming=True,
                    val_size=2)
    from datasets import IterableDataset

    assert isinstance(streamed.train_set, IterableDataset)
    batches = list(streamed.train_dataloader())
    ids = [row.tolist() for batch in batches for row, mask in zip(batch["input_ids"], batch["attention_mask"])
           for row in [row[mask.bool()]]]
    assert ids == stored.train_set["input_ids"][2:]
    assert [r["input_ids"] for r in streamed.val_set] == stored.train_set["input_ids"][:2]


def test_second_run_reads_the_cache_and_settings_change_the_key(tmp_path, qwen_tokenizer, monkeypatch):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)]
    write_data(tmp_path, {"d": {"file_name": "d.json"}}, {"d.json": rows})
    first = make(tmp_path, qwen_tokenizer, "d", max_samples=None)

    def fail(*args, **kwargs):
        raise AssertionError("preprocessing ran again")

    monkeypatch.setattr(tokenize, "encode_supervised", fail)
    monkeypatch.setattr(objectives, "encoder", lambda *a, **k: fail)
    second = make(tmp_path, qwen_tokenizer, "d", max_samples=None)  # same settings: read from disk
    assert second.train_set["input_ids"] == first.train_set["input_ids"]
    for changed in ({"cutoff_len": 100}, {"mask_history": True}, {"train_on_prompt": True}, {"template": "chatml"},
                    {"truncation_side": "left"}):
        with pytest.raises(AssertionError, match="preprocessing ran again"):
            make(tmp_path, qwen_tokenizer, "d", max_samples=None, **changed)


def test_multi_process_preprocessing_gives_the_same_rows(peer_data_dir, qwen_tokenizer):
    one = make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo", max_samples=40)
    two = make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo", max_samples=40, preprocessing_num_workers=2,
               cutoff_len=513)  # another cache key, so that the workers really run
    assert [ids[:200] for ids in two.train_set["input_ids"]] == [ids[:200] for ids in one.train_set["input_ids"]]


def test_streaming_pretrain_blocks_match(peer_data_dir, qwen_tokenizer):
    stored = make(peer_data_dir, qwen_tokenizer, "c4_demo", objective="pretrain", cutoff_len=64)
    streamed = make(peer_data_dir, qwen_tokenizer, "c4_demo", objective="pretrain", cutoff_len=64, streaming=True)
    assert [row["input_ids"] for row in streamed.train_set] == stored.train_set["input_ids"]
