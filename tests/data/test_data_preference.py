"""Preference data: pairwise (chosen/rejected) and KTO batches, and prompt-only batches, in the stages' contract."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.data.tokenize import IGNORE_INDEX
from lit_factory.errors import LitFactoryError
from test_data_tokenize import llamafactory_infer_seqlen  # the one copy of LLaMA-Factory's rule


def make(folder, tokenizer, dataset, objective, **kwargs) -> DataModule:
    kwargs = {"template": "qwen", "cutoff_len": 4096, "batch_size": 4, "max_samples": 8, "shuffle": False, **kwargs}
    module = DataModule(dataset, dataset_dir=str(folder), tokenizer=tokenizer, objective=objective, **kwargs)
    module.setup("fit")
    return module


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def sharegpt_to_openai(turns: list[dict]) -> list[dict]:
    roles = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
    return [{"role": roles[t.get("from", t.get("role"))], "content": t.get("value", t.get("content"))} for t in turns]


def real_ids(batch: dict, row: int) -> list[int]:
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


def test_pairwise_batches_on_dpo_demo(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "dpo_en_demo.json").read_text())[:4]
    batch = next(iter(make(peer_data_dir, qwen_tokenizer, "dpo_en_demo", "pairwise").train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[0] == 8 and all(t.dtype == torch.long for t in batch.values())
    for index, row in enumerate(rows):
        prompt = prompt_ids(qwen_tokenizer, sharegpt_to_openai(row["conversations"]))
        for batch_row, reply in ((index, row["chosen"]["value"]), (4 + index, row["rejected"]["value"])):
            ids = real_ids(batch, batch_row)
            labels = batch["labels"][batch_row]
            # Reference: the prompt with Qwen's generation header, then the reply and <|im_end|>, loss on the reply.
            assert ids[: len(prompt)] == prompt
            assert (labels[: len(prompt)] == IGNORE_INDEX).all()
            assert qwen_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist()) == reply + "<|im_end|>"
            assert ids[len(prompt):] == labels[len(prompt): len(ids)].tolist()


def test_pairwise_alpaca_columns_and_equal_pairs_dropped(tmp_path, qwen_tokenizer, caplog):
    rows = [
        {"instruction": "Say hi", "input": "", "chosen": "Hi!", "rejected": "No."},
        {"instruction": "Same", "input": "", "chosen": "A", "rejected": "A"},
        {"instruction": "Count", "input": "to two", "chosen": "1 2", "rejected": "3"},
    ]
    (tmp_path / "prefs.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {
        "file_name": "prefs.json", "ranking": True, "columns": {"prompt": "instruction", "query": "input",
                                                               "chosen": "chosen", "rejected": "rejected"}}}))
    with caplog.at_level(logging.WARNING, logger="lit_factory.data.align"):
        module = make(tmp_path, qwen_tokenizer, "prefs", "pairwise")
    assert len(module.train_set) == 2
    assert [r.getMessage() for r in caplog.records if "chosen equals rejected" in r.getMessage()] == [
        f"skipped 1 of 3 rows in {tmp_path / 'prefs.json'}: 1 chosen equals rejected"]
    batch = next(iter(module.train_dataloader()))
    decoded = [qwen_tokenizer.decode(row[row != IGNORE_INDEX].tolist()) for row in batch["labels"]]
    assert decoded == ["Hi!<|im_end|>", "1 2<|im_end|>", "No.<|im_end|>", "3<|im_end|>"]
    reply_length = int((batch["labels"][1] != IGNORE_INDEX).sum())
    assert real_ids(batch, 1)[:-reply_length] == prompt_ids(qwen_tokenizer, [{"role": "user", "content": "Count\nto two"}])


def test_pairwise_truncation_cuts_both_replies_to_one_budget(peer_data_dir, qwen_tokenizer):
    batch = next(iter(make(peer_data_dir, qwen_tokenizer, "dpo_en_demo", "pairwise", cutoff_len=64,
                           batch_size=2).train_dataloader()))
    lengths = batch["attention_mask"].sum(dim=1)
    assert (lengths <= 64).all()
    for row in range(2):  # the prompt is the same tokens in the chosen and the rejected row
        chosen_prompt = (batch["labels"][row] == IGNORE_INDEX) & batch["attention_mask"][row].bool()
        rejected_prompt = (batch["labels"][2 + row] == IGNORE_INDEX) & batch["attention_mask"][2 + row].bool()
        assert chosen_prompt.sum() == rejected_prompt.sum() > 0


@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_preference_truncation_matches_llamafactory(peer_data_dir, qwen_tokenizer, truncation_side):
    """LLaMA-Factory's pairwise and feedback processors: infer_seqlen(prompt, longest reply incl. its "<|im_end|>\n",
    cutoff_len), the prompt keeping its beginning; ``truncation_side: left`` keeps its end instead (TRL's keep_end).
    Our rows end at <|im_end|>, without the newline that follows it."""
    cutoff = 48
    reply_ids = lambda text: qwen_tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)  # noqa: E731
    newline = len(qwen_tokenizer.encode("\n", add_special_tokens=False))
    cut_prompts = 0
    for dataset, objective in (("dpo_en_demo", "pairwise"), ("kto_en_demo", "kto")):
        rows = json.loads((peer_data_dir / f"{dataset}.json").read_text())[:8]
        data = make(peer_data_dir, qwen_tokenizer, dataset, objective, cutoff_len=cutoff,
                    truncation_side=truncation_side).train_set
        assert len(data) == len(rows)
        for row, example in zip(rows, data):
            if objective == "pairwise":
                prompt = prompt_ids(qwen_tokenizer, sharegpt_to_openai(row["conversations"]))
                replies = [reply_ids(row["chosen"]["value"]), reply_ids(row["rejected"]["value"])]
                got = [example["chosen_ids"], example["rejected_ids"]]
            else:
                prompt = prompt_ids(qwen_tokenizer, sharegpt_to_openai(row["messages"][:-1]))
                replies = [reply_ids(row["messages"][-1]["content"])]
                got = [example["completion_ids"]]
            kept_prompt, kept_reply = llamafactory_infer_seqlen(len(prompt), max(map(len, replies)) + newline, cutoff)
            expected_prompt = prompt[:kept_prompt] if truncation_side == "right" else prompt[len(prompt) - kept_prompt:]
            assert example["prompt_ids"] == expected_prompt
            assert got == [reply[:kept_reply] for reply in replies]
            cut_prompts += kept_prompt < len(prompt)
    assert cut_prompts >= 4  # the cut really falls in the prompt in several rows


def test_kto_batches_on_kto_demo(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "kto_en_demo.json").read_text())[:4]
    batch = next(iter(make(peer_data_dir, qwen_tokenizer, "kto_en_demo", "kto").train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "kto_tags", "kl_input_ids", "kl_attention_mask",
                          "kl_labels"}
    assert batch["kto_tags"].dtype == torch.bool
    assert batch["kto_tags"].tolist() == [row["label"] for row in rows]
    prompts = [prompt_ids(qwen_tokenizer, sharegpt_to_openai(row["messages"][:-1])) for row in rows]
    completions = [row["messages"][-1]["content"] + "<|im_end|>" for row in rows]
    for index in range(4):
        ids, labels = real_ids(batch, index), batch["labels"][index]
        assert ids[: len(prompts[index])] == prompts[index]
        assert qwen_tokenizer.decode(labels[labels != IGNORE_INDEX].tolist()) == completions[index]
        # KL row: this prompt with the previous row's completion (TRL's shift), loss on that completion only.
        kl_ids = batch["kl_input_ids"][index][batch["kl_attention_mask"][index].bool()].tolist()
        kl_labels = batch["kl_labels"][index]
        assert kl_ids[: len(prompts[index])] == prompts[index]
        assert qwen_tokenizer.decode(kl_labels[kl_labels != IGNORE_INDEX].tolist()) == completions[index - 1]


def test_prompt_batches_are_left_padded_generation_prompts(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())[:4]
    batch = next(iter(make(peer_data_dir, qwen_tokenizer, "alpaca_en_demo", "prompt").train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask"}
    for index, row in enumerate(rows):
        content = "\n".join(part for part in (row["instruction"], row["input"]) if part)
        expected = prompt_ids(qwen_tokenizer, [{"role": "user", "content": content}])
        mask = batch["attention_mask"][index]
        pad = batch["input_ids"].shape[1] - len(expected)
        assert mask.tolist() == [0] * pad + [1] * len(expected)  # left padding
        assert batch["input_ids"][index, pad:].tolist() == expected


def test_objective_and_data_mismatches_are_one_line_errors(peer_data_dir, qwen_tokenizer):
    cases = [
        ("alpaca_en_demo", "pairwise", "entry 'alpaca_en_demo' is not a ranking dataset; objective 'pairwise'"),
        ("dpo_en_demo", "supervised", "entry 'dpo_en_demo' is a preference \\(ranking\\) dataset"),
        ("dpo_en_demo", "kto", "entry 'dpo_en_demo' is a preference"),
        ("alpaca_en_demo", "kto", "entry 'alpaca_en_demo' has no kto_tag column"),
    ]
    for dataset, objective, message in cases:
        with pytest.raises(LitFactoryError, match=message) as error:
            make(peer_data_dir, qwen_tokenizer, dataset, objective)
        assert "\n" not in str(error.value) and "Fix:" in str(error.value)
    with pytest.raises(LitFactoryError, match="batch_size of at least 2"):
        DataModule("kto_en_demo", dataset_dir=str(peer_data_dir), objective="kto", batch_size=1)
    with pytest.raises(LitFactoryError, match="data.truncation_side='end' is unknown. Fix: right") as error:
        DataModule("dpo_en_demo", dataset_dir=str(peer_data_dir), objective="pairwise", truncation_side="end")
    assert "\n" not in str(error.value)


def test_predict_batches_carry_the_reference_replies(peer_data_dir, qwen_tokenizer):
    rows = json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())[:3]
    module = DataModule("alpaca_en_demo", dataset_dir=str(peer_data_dir), tokenizer=qwen_tokenizer,
                        template="qwen", max_samples=3, eval_batch_size=3)
    batch = next(iter(module.predict_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels_text"}
    assert batch["labels_text"] == [row["output"] for row in rows]
    assert batch["attention_mask"][:, -1].all()  # left padded: every prompt ends at the last column
    content = "\n".join(part for part in (rows[0]["instruction"], rows[0]["input"]) if part)
    expected = prompt_ids(qwen_tokenizer, [{"role": "user", "content": content}])
    assert batch["input_ids"][0, -len(expected):].tolist() == expected
