"""Tool data (OpenAI messages with ``tool_calls`` and ``tool`` results) through the data module, token for token
against the real Qwen2.5 tokenizer's ``apply_chat_template`` with ``tools=``: the assistant's text next to its calls
is kept and carries loss with them, and consecutive tool results get one ``<tool_response>`` block each."""

from __future__ import annotations

import json
import random

import pytest

from dialogues import random_text
from lit_factory.data.datamodule import DataModule
from lit_factory.data.tokenize import IGNORE_INDEX
from lit_factory.data.tool_messages import observation_content, read_observation

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def call(name: str, arguments: dict) -> dict:
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def for_reference(messages: list[dict]) -> list[dict]:
    """The same messages as Qwen's template reads them: arguments as objects (OpenAI sends a JSON string), no ids."""
    out = []
    for message in messages:
        message = {key: value for key, value in message.items() if key != "tool_call_id"}
        if message.get("tool_calls"):
            message["tool_calls"] = [{"type": "function", "function": {
                "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in message["tool_calls"]]
        out.append(message)
    return out


def random_tool_row(rng: random.Random) -> dict:
    """1-2 rounds: a user message, 0-2 tool steps (the assistant's calls, with or without text before them, then
    one result per call) and a final reply; tools and a system prompt (none, empty or text) vary too."""
    names = rng.sample(["get_weather", "search", "add", "translate", "book_table"], rng.randint(1, 3))
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
             for n in names]
    messages = []
    kind = rng.choice(["none", "empty", "text"])
    if kind != "none":
        messages.append({"role": "system", "content": "" if kind == "empty" else random_text(rng)})
    for _ in range(rng.randint(1, 2)):
        messages.append({"role": "user", "content": random_text(rng, blank_ok=True)})
        for _ in range(rng.randint(0, 2)):
            calls = [call(rng.choice(names), {"q": random_text(rng, markers=False), "n": rng.randint(0, 9)})
                     for _ in range(rng.randint(1, 3))]
            text = rng.choice([None, "", random_text(rng), " "])
            messages.append({"role": "assistant", "content": text, "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": c["id"], "content": random_text(rng)} for c in calls]
        messages.append({"role": "assistant", "content": random_text(rng)})
    return {"messages": messages, "tools": tools}


def reference_ids_and_labels(tokenizer, messages: list[dict], tools: list[dict]) -> tuple[list[int], list[int]]:
    """apply_chat_template's ids, and labels on the tokens that start inside an assistant message's rendering (what
    it adds after the generation prompt, minus the trailing newline): its text, its calls and <|im_end|>."""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = tokenizer.apply_chat_template(messages[:index], tools=tools, tokenize=False,
                                                   add_generation_prompt=True)
            after = tokenizer.apply_chat_template(messages[: index + 1], tools=tools, tokenize=False)
            assert after.startswith(before)
            spans.append((len(before), len(before) + len(after[len(before):].rstrip())))
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids == encoded["input_ids"]
    labels = [token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
              for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    return ids, labels


def tokenized_rows(folder, tokenizer, rows: list[dict], template: str) -> list[dict]:
    (folder / "dataset_info.json").write_text(json.dumps({"chat": {
        "file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "messages", "tools": "tools"}}}))
    (folder / "chat.json").write_text(json.dumps(rows, ensure_ascii=False))
    module = DataModule("chat", dataset_dir=str(folder), tokenizer=tokenizer, template=template, cutoff_len=10**5,
                        batch_size=2, shuffle=False)
    module.setup("fit")
    return list(module.train_set)


def test_text_with_parallel_calls_and_two_results(tmp_path, qwen_tokenizer):
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me check both.",
         "tool_calls": [call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Rome"})]},
        {"role": "tool", "tool_call_id": "call_get_weather", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_get_weather", "content": "rainy"},
        {"role": "assistant", "content": "Paris is sunny, Rome rainy."},
    ]
    (row,) = tokenized_rows(tmp_path, qwen_tokenizer, [{"messages": messages, "tools": [WEATHER]}], "qwen")
    expected_ids, expected_labels = reference_ids_and_labels(qwen_tokenizer, for_reference(messages), [WEATHER])
    assert row["input_ids"] == expected_ids and row["labels"] == expected_labels
    text = qwen_tokenizer.decode(row["input_ids"])
    assert ("<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrainy\n</tool_response>"
            "<|im_end|>") in text
    loss = qwen_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert loss == (
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
        "Paris is sunny, Rome rainy.<|im_end|>")


@pytest.mark.parametrize("template", ["qwen", "tokenizer"])
def test_random_tool_dialogues_equal_apply_chat_template(template, tmp_path, qwen_tokenizer):
    """40 seeded tool dialogues, with the Qwen template and with the tokenizer's own jinja (template: tokenizer)."""
    rng = random.Random(3)
    rows = [random_tool_row(rng) for _ in range(40)]
    tokenized = tokenized_rows(tmp_path, qwen_tokenizer, rows, template)
    assert len(tokenized) == len(rows)
    for row, source in zip(tokenized, rows):
        expected_ids, expected_labels = reference_ids_and_labels(
            qwen_tokenizer, for_reference(source["messages"]), source["tools"])
        assert row["input_ids"] == expected_ids, source
        assert row["labels"] == expected_labels, source


def test_tool_results_envelope_reads_back_exactly():
    assert observation_content(["sunny"]) == "sunny"
    assert read_observation(observation_content(["a", "b"])) == ["a", "b"]
    # A single result that looks like the envelope is wrapped, so it reads back as itself.
    lookalike = observation_content(["x", "y"])
    assert read_observation(observation_content([lookalike])) == [lookalike]
    assert read_observation('{"tool_results": "not a list"}') == ['{"tool_results": "not a list"}']
