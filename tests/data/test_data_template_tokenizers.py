"""Templates with the real tokenizers: token for token against apply_chat_template (Qwen, Mistral), the tokenizer's
own chat template as a template, and automatic selection."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dialogues import SYSTEM, TWO_TURNS, dialogues
from lit_factory.data.templates import detect_template_name, get_template
from lit_factory.data.tokenize import IGNORE_INDEX, encode_supervised
from lit_factory.errors import LitFactoryError

CASES = {"single": TWO_TURNS[:2], "multi": TWO_TURNS, "multi_system": [SYSTEM, *TWO_TURNS]}


def reference_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def mistral_reply_labels(ids: list[int], tokenizer) -> list[int]:
    """Found from the ids alone: every token after a "[/INST]" up to and including the next </s>."""
    close = tokenizer.encode(" [/INST]", add_special_tokens=False)[-3:]  # "/", "INST", "]"
    eos = tokenizer.eos_token_id
    labels, inside = [], False
    for index, token in enumerate(ids):
        labels.append(token if inside else IGNORE_INDEX)
        if inside and token == eos:
            inside = False
        if ids[max(0, index - 2): index + 1] == close:
            inside = True
    return labels


@pytest.mark.parametrize("case", CASES)
def test_mistral_ids_and_mask_match_apply_chat_template(case, mistral_tokenizer):
    messages = CASES[case]
    ids, labels = encode_supervised(messages, mistral_tokenizer, get_template("mistral"), cutoff_len=4096)
    expected = reference_ids(mistral_tokenizer, messages)
    assert ids == expected
    assert labels == mistral_reply_labels(expected, mistral_tokenizer)


@pytest.mark.parametrize("case", CASES)
def test_tokenizer_template_equals_the_named_family(case, mistral_tokenizer, qwen_tokenizer):
    messages = CASES[case]
    for tokenizer, family in ((mistral_tokenizer, "mistral"), (qwen_tokenizer, "qwen")):
        own = get_template("tokenizer", tokenizer)
        assert own.name == "tokenizer" and own.stop_words == (tokenizer.eos_token,)
        assert encode_supervised(messages, tokenizer, own, 4096) == encode_supervised(
            messages, tokenizer, get_template(family), 4096)
        tokens = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token}
        assert own.render_prompt(messages[:-1], **tokens) == tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True)


def test_tokenizer_template_without_one_is_an_error():
    with pytest.raises(LitFactoryError, match="data.template='tokenizer': the tokenizer has no chat_template"):
        get_template("tokenizer", SimpleNamespace(chat_template=None))


def test_auto_selects_by_chat_template_then_model_type(mistral_tokenizer, shared_dir, tmp_path):
    assert detect_template_name(mistral_tokenizer) == "mistral"
    references = {"llama-2-chat": "llama2", "llama-3-instruct": "llama3", "gemma-it": "gemma", "phi-3": "phi",
                  "zephyr": "zephyr", "openchat-3.5": "openchat", "vicuna": "vicuna", "alpaca": "alpaca",
                  "granite-3.0-instruct": "granite", "chatml": "chatml", "qwen2.5-instruct": "qwen"}
    for reference, family in references.items():
        chat_template = (shared_dir / "chat-templates" / f"{reference}.jinja").read_text()
        assert detect_template_name(SimpleNamespace(chat_template=chat_template)) == family, reference
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "baichuan"}))
    assert detect_template_name(SimpleNamespace(chat_template=None, name_or_path=str(tmp_path))) == "baichuan2"
    assert detect_template_name(SimpleNamespace(chat_template=None, name_or_path="")) == "default"


def reference_labels(tokenizer, messages) -> list[int]:
    """Labels from apply_chat_template alone: a token carries loss when it starts inside an assistant reply, the text
    that rendering the reply adds after the generation prompt, minus the whitespace after it (never generated).
    (A token that starts in the header and runs into the reply, e.g. Qwen's "\\n\\n" before a reply that starts
    with a newline, belongs to the header.)"""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            after = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
            assert after.startswith(before)
            spans.append((len(before), len(before) + len(after[len(before):].rstrip())))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"])]


@pytest.mark.parametrize("family", ["qwen", "mistral"])
def test_random_dialogues_ids_and_labels_equal_apply_chat_template(family, request):
    """100 seeded dialogues (see tests/dialogues.py: empty/blank systems, padded messages, non-ASCII, other
    families' control tokens inside messages, 1-3 exchanges) through the real tokenizers, token for token."""
    tokenizer = request.getfixturevalue(f"{family}_tokenizer")
    template = get_template(family)
    loss_tokens = 0
    for messages in dialogues(seed=4, count=100):
        ids, labels = encode_supervised(messages, tokenizer, template, cutoff_len=10**6)
        assert ids == reference_ids(tokenizer, messages), messages
        assert labels == reference_labels(tokenizer, messages), messages
        loss_tokens += sum(label != IGNORE_INDEX for label in labels)
    assert loss_tokens > 1000


def test_qwen_explicit_empty_system_is_an_empty_block_not_the_default(qwen_tokenizer):
    dialogue = TWO_TURNS[:2]
    empty = [{"role": "system", "content": ""}, *dialogue]
    template = get_template("qwen")
    ids, _ = encode_supervised(empty, qwen_tokenizer, template, 4096)
    assert ids == reference_ids(qwen_tokenizer, empty)
    assert encode_supervised(dialogue, qwen_tokenizer, template, 4096, system="")[0] == ids
    default_ids, _ = encode_supervised(dialogue, qwen_tokenizer, template, 4096)  # no system: Qwen's default
    assert default_ids == reference_ids(qwen_tokenizer, dialogue)
    assert qwen_tokenizer.decode(ids[:5]) == "<|im_start|>system\n<|im_end|>\n"
    assert len(default_ids) - len(ids) == len(qwen_tokenizer.encode(template.default_system))
