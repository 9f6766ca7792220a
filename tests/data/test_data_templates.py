"""Chat templates against the models' official jinja templates, and the loss mask against apply_chat_template."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dialogues import SYSTEM, TWO_TURNS
from lit_factory.data.templates import available_templates, detect_template_name, get_template
from lit_factory.data.tokenize import IGNORE_INDEX, encode_supervised
from lit_factory.errors import LitFactoryError

CONVERSATIONS = {"no_system": TWO_TURNS, "with_system": [SYSTEM, *TWO_TURNS]}


def reference_ids(tokenizer, messages, **kwargs) -> list[int]:
    """apply_chat_template's token ids (transformers 5 returns a BatchEncoding, 4.x a plain list)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def expected_qwen_labels(ids: list[int], tokenizer) -> list[int]:
    """Labels found independently of our code: the ids after each ``<|im_start|>assistant\\n`` header, up to and
    including the next ``<|im_end|>``; everything else -100."""
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = [IGNORE_INDEX] * len(ids)
    position = 0
    while position < len(ids):
        if ids[position : position + len(header)] == header:
            position += len(header)
            while ids[position] != im_end:
                labels[position] = ids[position]
                position += 1
            labels[position] = ids[position]
        position += 1
    return labels


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_qwen_ids_and_loss_mask_match_apply_chat_template(case, qwen_tokenizer):
    messages = CONVERSATIONS[case]
    template = get_template("qwen")
    input_ids, labels = encode_supervised(messages, qwen_tokenizer, template, cutoff_len=4096)

    expected_ids = reference_ids(qwen_tokenizer, messages)
    assert input_ids == expected_ids
    expected_labels = expected_qwen_labels(expected_ids, qwen_tokenizer)
    assert labels == expected_labels
    # The mask covers exactly the two replies and their <|im_end|>.
    decoded = qwen_tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    assert decoded == "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_qwen_system_argument_equals_system_message(case, qwen_tokenizer):
    template = get_template("qwen")
    with_message = encode_supervised(CONVERSATIONS["with_system"], qwen_tokenizer, template, cutoff_len=4096)
    with_argument = encode_supervised(TWO_TURNS, qwen_tokenizer, template, 4096, system=SYSTEM["content"])
    assert with_message == with_argument


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_qwen_text_matches_official_jinja(case, qwen_tokenizer, render_reference_template):
    messages = CONVERSATIONS[case]
    template = get_template("qwen")
    ours = "".join(text for text, _ in template.render(messages))
    assert ours == render_reference_template("qwen2.5-instruct", messages)
    assert ours == qwen_tokenizer.apply_chat_template(messages, tokenize=False)

    prompt = template.render_prompt(messages[:-1])
    assert prompt == render_reference_template("qwen2.5-instruct", messages[:-1], add_generation_prompt=True)
    prompt_ids = qwen_tokenizer.encode(prompt, add_special_tokens=False)
    assert prompt_ids == reference_ids(qwen_tokenizer, messages[:-1], add_generation_prompt=True)


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_llama3_text_matches_official_jinja(case, render_reference_template):
    # Difference by design: the reference strips whitespace around each message (`| trim`), we keep messages as
    # the data has them (as LLaMA-Factory does), so these messages have no surrounding whitespace.
    messages = CONVERSATIONS[case]
    tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    template = get_template("llama3")
    ours = "".join(text for text, _ in template.render(messages, **tokens))
    assert ours == render_reference_template("llama-3-instruct", messages, **tokens)
    prompt = template.render_prompt(messages[:-1], **tokens)
    assert prompt == render_reference_template("llama-3-instruct", messages[:-1], add_generation_prompt=True, **tokens)


@pytest.mark.parametrize("bos_token", ["", "<s>"])
@pytest.mark.parametrize("case", CONVERSATIONS)
def test_chatml_text_matches_reference_jinja(case, bos_token, render_reference_template):
    messages = CONVERSATIONS[case]
    tokens = {"bos_token": bos_token, "eos_token": "<|im_end|>"}
    template = get_template("chatml")
    ours = "".join(text for text, _ in template.render(messages, **tokens))
    assert ours == render_reference_template("chatml", messages, **tokens)
    prompt = template.render_prompt(messages[:-1], **tokens)
    assert prompt == render_reference_template("chatml", messages[:-1], add_generation_prompt=True, **tokens)


def test_only_replies_are_loss_bearing():
    segments = get_template("qwen").render([SYSTEM, *TWO_TURNS])
    loss_texts = [text for text, is_loss in segments if is_loss]
    assert loss_texts == ["2 + 2 = 4.<|im_end|>", "(2 + 2) × 3 = 12.\n\nFirst add, then multiply.<|im_end|>"]


def test_default_and_empty_templates_render_their_documented_format():
    messages = TWO_TURNS[:2]
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    default = get_template("default").render(messages, system="Be brief.", **tokens)
    assert default == [
        ("<s>System: Be brief.</s>\nHuman: What is 2 + 2?</s>\nAssistant:", False),
        ("2 + 2 = 4.</s>", True),
        ("\n", False),
    ]
    assert get_template("empty").render(messages, **tokens) == [("What is 2 + 2?", False), ("2 + 2 = 4.", True)]


def test_content_with_placeholders_is_kept_verbatim():
    messages = [{"role": "user", "content": "say {eos} and {content}"}, {"role": "assistant", "content": "{bos}"}]
    segments = get_template("default").render(messages, bos_token="<s>", eos_token="</s>")
    assert segments[0][0] == "<s>Human: say {eos} and {content}</s>\nAssistant:"
    assert segments[1][0] == "{bos}</s>"


def test_auto_detects_template_from_tokenizer(qwen_tokenizer, shared_dir):
    assert detect_template_name(qwen_tokenizer) == "qwen"
    assert get_template("auto", qwen_tokenizer).name == "qwen"
    templates = shared_dir / "chat-templates"
    chatml = SimpleNamespace(chat_template=(templates / "chatml.jinja").read_text())
    llama3 = SimpleNamespace(chat_template=(templates / "llama-3-instruct.jinja").read_text())
    assert detect_template_name(chatml) == "chatml"
    assert detect_template_name(llama3) == "llama3"
    assert detect_template_name(SimpleNamespace(chat_template=None)) == "default"


def test_shipped_templates():
    assert {"qwen", "chatml", "llama3", "default", "empty"} <= set(available_templates())
    qwen = get_template("qwen")
    assert qwen.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert qwen.stop_words == ("<|im_end|>",)


def test_template_errors_name_the_problem(tmp_path):
    with pytest.raises(LitFactoryError, match=r"no template 'nope'.*all 1\d\d are listed in docs/templates\.md"):
        get_template("nope")
    with pytest.raises(LitFactoryError, match=r"no template 'qwen4'.*closest: qwen3?, qwen"):
        get_template("qwen4")
    bad = tmp_path / "bad.yaml"
    bad.write_text("user_format: 'User: {content}'\nasistant_format: '{content}'\n")
    with pytest.raises(LitFactoryError, match=r"bad\.yaml: unknown field\(s\) \['asistant_format'\]"):
        get_template(str(bad))
    no_content = tmp_path / "no_content.yaml"
    no_content.write_text("user_format: 'User:'\n")
    with pytest.raises(LitFactoryError, match=r"no_content\.yaml: field 'user_format' has no \{content\}"):
        get_template(str(no_content))
    bad_trim = tmp_path / "bad_trim.yaml"
    bad_trim.write_text("trim: [system, reply]\n")
    with pytest.raises(LitFactoryError, match=r"bad_trim\.yaml: field 'trim' lists \['reply'\]"):
        get_template(str(bad_trim))
    bad_pairs = tmp_path / "bad_pairs.yaml"
    bad_pairs.write_text("content_replacements: [a, b]\n")
    with pytest.raises(LitFactoryError, match=r"bad_pairs\.yaml: field 'content_replacements' must be a list"):
        get_template(str(bad_pairs))
    with pytest.raises(LitFactoryError, match="expected 'assistant'"):
        get_template("qwen").render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_custom_template_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('user_format: "### Q: {content}\\n### A: "\nassistant_format: "{content}{eos}"\nseparator: "\\n"\n')
    template = get_template(str(path))
    assert template.name == "mine"
    text = "".join(t for t, _ in template.render(TWO_TURNS[:2], eos_token="</s>"))
    assert text == "### Q: What is 2 + 2?\n### A: 2 + 2 = 4.</s>\n"


@pytest.mark.parametrize("dataset", ["alpaca_en_demo", "alpaca_zh_demo", "identity", "glaive_toolcall_en_demo",
                                     "glaive_toolcall_zh_demo"])
def test_demo_data_ids_match_apply_chat_template(dataset, qwen_tokenizer, peer_data_dir):
    """Piece-by-piece tokenisation equals tokenising the whole rendering, on real data (first 100 rows)."""
    from lit_factory.data.align import align_dataset
    from lit_factory.data.loader import load_dataset_file
    from lit_factory.data.spec import get_dataset_spec

    spec = get_dataset_spec(dataset, peer_data_dir)
    raw = load_dataset_file(spec)
    rows = align_dataset(raw.select(range(min(100, len(raw)))), spec)
    template = get_template("qwen")
    for row in rows:
        system = [{"role": "system", "content": row["system"]}] if row["system"] is not None else []
        input_ids, labels = encode_supervised(row["messages"], qwen_tokenizer, template, 10**6, system=row["system"],
                                              tools=row["tools"])
        tools = json.loads(row["tools"]) if row["tools"] else None
        expected = reference_ids(qwen_tokenizer, system + openai_messages(row["messages"]), tools=tools)
        assert input_ids == expected
        assert labels == expected_qwen_labels(expected, qwen_tokenizer)


def openai_messages(messages: list[dict]) -> list[dict]:
    """Our function/observation turns as the OpenAI messages Qwen's template reads (tool_calls / tool)."""
    out = []
    for message in messages:
        if message["role"] == "function":
            call = json.loads(message["content"])
            out.append({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]})
        elif message["role"] == "observation":
            out.append({"role": "tool", "content": message["content"]})
        else:
            out.append(message)
    return out
