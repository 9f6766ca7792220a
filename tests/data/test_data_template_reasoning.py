"""Reasoning templates (Qwen3-style ``<think>``) against the official Qwen3 jinja, string for string: earlier
replies lose their thoughts, the latest keeps it (or the empty block), ``enable_thinking`` moves the empty block into
the prompt; and loss masks that cover exactly the replies the reference writes. Also: LLaMA-Factory's template
names all resolve, ``extends``/``aliases`` behave, ``auto`` picks the new families, and docs/templates.md is current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dialogues import dialogues
from lit_factory.data.templates import available_templates, detect_template_name, get_template
from lit_factory.data.tokenize import IGNORE_INDEX, encode_supervised
from lit_factory.errors import LitFactoryError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
THOUGHT = "<think>\nFirst 2 + 2 = 4.\nThen check it.\n</think>\n\n"
CONVERSATION = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": THOUGHT + "2 + 2 = 4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "<think>\n(2 + 2) × 3\n</think>\n\n12."},
]
PLAIN = [m if m["role"] != "assistant" else {**m, "content": m["content"].split("</think>")[-1].lstrip("\n")}
         for m in CONVERSATION]


def official(name: str, messages: list[dict], add_generation_prompt: bool = False, **kwargs) -> str:
    """A fixture template rendered by transformers' own renderer (what apply_chat_template runs)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=(FIXTURES / name).read_text(),
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


def joined(segments: list[tuple[str, bool]]) -> str:
    return "".join(text for text, _ in segments)


@pytest.mark.parametrize("messages", [CONVERSATION, PLAIN, CONVERSATION[1:], PLAIN[1:3]], ids=["thoughts", "plain",
                                                                                               "no_system", "one"])
def test_qwen3_renders_like_the_official_template(messages):
    template = get_template("qwen3")
    segments = template.render(messages)
    assert joined(segments) == official("qwen3.jinja", messages)
    # Replies before the last user message lose their thought; the latest keeps it (or writes the empty block).
    loss = [text for text, is_loss in segments if is_loss]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    expected = [reply.split("</think>")[-1].lstrip("\n") + "<|im_end|>" for reply in replies[:-1]]
    last = replies[-1]
    expected.append((last if "</think>" in last else "<think>\n\n</think>\n\n" + last) + "<|im_end|>")
    assert loss == expected
    # The latest reply's loss-bearing text is exactly what the reference adds after its generation prompt.
    before = official("qwen3.jinja", messages[:-1], add_generation_prompt=True)
    after = official("qwen3.jinja", messages)
    assert after.startswith(before) and after[len(before):].rstrip() == loss[-1]
    for enable_thinking in (True, False):
        prompt = get_template("qwen3", enable_thinking=enable_thinking).render_prompt(messages[:-1])
        assert prompt == official("qwen3.jinja", messages[:-1], add_generation_prompt=True,
                                  enable_thinking=enable_thinking)


def test_qwen3_enable_thinking_false_moves_the_empty_block_into_the_prompt():
    template = get_template("qwen3", enable_thinking=False)
    assert template.enable_thinking is False and get_template("qwen3").enable_thinking is True
    segments = template.render(CONVERSATION)
    # The same text as the official template writes for the conversation without thoughts ...
    assert joined(segments) == official("qwen3.jinja", PLAIN)
    # ... but the empty block is the end of the prompt (no loss), as the generation prompt with enable_thinking=False.
    prompt, reply = segments[-3][0], segments[-2]
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and reply == ("12.<|im_end|>", True)
    assert prompt.endswith(official("qwen3.jinja", PLAIN[:-1], add_generation_prompt=True, enable_thinking=False)
                           [-len("<|im_start|>assistant\n<think>\n\n</think>\n\n"):])
    # A template that does not think ignores the option, as LLaMA-Factory does.
    assert get_template("qwen", enable_thinking=False) == get_template("qwen")


PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                           "parameters": PARAMETERS}}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize("system", [None, "", "Be brief."])
def test_qwen3_tools_like_the_official_template(system):
    ours = [{"role": "user", "content": "Weather in Paris?"}, {"role": "function", "content": json.dumps(CALL)},
            {"role": "observation", "content": '{"temp": 20}'}, {"role": "assistant", "content": "It is 20 °C."}]
    openai = [ours[0], {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
              {"role": "tool", "content": '{"temp": 20}'}, ours[3]]
    head = [] if system is None else [{"role": "system", "content": system}]
    for name in ("qwen3", "qwen3_nothink"):
        template = get_template(name)
        segments = template.render([*head, *ours], tools=json.dumps(TOOLS))
        expected = official("qwen3.jinja", [*head, *openai], tools=TOOLS)
        if name == "qwen3_nothink":  # the same turns without the latest reply's thought block
            expected = expected.replace("<think>\n\n</think>\n\n", "")
        assert joined(segments) == expected, name
        loss = [text for text, is_loss in segments if is_loss]
        assert loss[0] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    prompt = get_template("qwen3").render_prompt([*head, *ours[:3]], tools=json.dumps(TOOLS))
    assert prompt == official("qwen3.jinja", [*head, *openai[:3]], tools=TOOLS, add_generation_prompt=True)


def test_qwen3_random_dialogues_match_the_official_template():
    """150 seeded dialogues (blank/padded messages, CRLF, other families' markers, empty systems)."""
    template = get_template("qwen3")
    for messages in dialogues(seed=21, count=150):
        assert joined(template.render(messages)) == official("qwen3.jinja", messages), messages
        assert template.render_prompt(messages[:-1]) == official("qwen3.jinja", messages[:-1],
                                                                 add_generation_prompt=True), messages


def test_qwen3_loss_mask_tokens(qwen_tokenizer):
    """Through encode_supervised with the Qwen2.5 tokenizer (Qwen3's vocabulary is Qwen2.5's; Qwen3 adds <think> and
    </think> as tokens, which this one splits, the same on both sides): the labelled ids decode to exactly the
    loss-bearing replies, thinking off puts no loss on the empty block, and ids equal apply_chat_template's."""
    for enable_thinking, tail in ((True, "<think>\n(2 + 2) × 3\n</think>\n\n12.<|im_end|>"), (False, "12.<|im_end|>")):
        template = get_template("qwen3", enable_thinking=enable_thinking)
        ids, labels = encode_supervised(CONVERSATION, qwen_tokenizer, template, cutoff_len=4096)
        assert qwen_tokenizer.decode(ids) == joined(template.render(CONVERSATION))
        labelled = qwen_tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        assert labelled == "2 + 2 = 4.<|im_end|>" + tail
    # Token for token with apply_chat_template running the official Qwen3 template on the same vocabulary.
    qwen3 = (FIXTURES / "qwen3.jinja").read_text()
    template = get_template("qwen3")
    for messages in [CONVERSATION, *dialogues(seed=8, count=40)]:
        ids, _ = encode_supervised(messages, qwen_tokenizer, template, cutoff_len=10**6)
        expected = qwen_tokenizer.apply_chat_template(messages, chat_template=qwen3, tokenize=True)
        assert ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected), messages


# family -> (official template in tests/fixtures/chat_templates, special tokens, whether it accepts a system message)
OFFICIAL = {"gemma2": ("gemma-2-it.jinja", {"bos_token": "<bos>", "eos_token": "<eos>"}, False),
            "phi4": ("phi-4.jinja", {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}, True)}


@pytest.mark.parametrize("family", OFFICIAL)
def test_families_match_their_official_template(family):
    """Text, generation prompt and reply positions (found from the reference alone) on 200 seeded dialogues (Gemma
    2's template refuses a system message, so for it those dialogues are left out)."""
    from test_data_template_families import reference_reply_spans

    reference, tokens, system_ok = OFFICIAL[family]
    template = get_template(family)
    render = lambda name, messages, **kw: official(name, messages, **kw)  # noqa: E731 - the helper's signature
    checked = 0
    for messages in dialogues(seed=5, count=200):
        if messages[0]["role"] == "system" and not system_ok:
            continue
        segments = template.render(messages, **tokens)
        assert joined(segments) == official(reference, messages, **tokens), messages
        assert template.render_prompt(messages[:-1], **tokens) == official(
            reference, messages[:-1], add_generation_prompt=True, **tokens), messages
        spans, position = [], 0
        for text, is_loss in segments:
            if is_loss:
                spans.append((position, position + len(text)))
            position += len(text)
        assert spans == reference_reply_spans(render, reference, messages, **tokens), messages
        checked += 1
    assert checked > 60
    assert get_template("gemma3").name == "gemma"  # Gemma 3's text format is Gemma's


def test_every_llamafactory_template_name_resolves():
    names = (FIXTURES / "llamafactory_template_names.txt").read_text().split()
    assert len(names) == 124
    assert not set(names) - set(available_templates())
    user = [{"role": "user", "content": "Hi"}]
    for name in names:
        template = get_template(name)
        prompt = template.render_prompt(user, bos_token="<s>", eos_token="</s>")
        assert "Hi" in prompt and "{content}" not in prompt, name
    # Spot checks of formats LLaMA-Factory writes (its template.py; the text is what its slots concatenate).
    reply = [*user, {"role": "assistant", "content": "Hello"}]
    assert joined(get_template("phi4").render(reply)) == (
        "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>Hello<|im_end|>")
    assert joined(get_template("qwen2_vl").render(reply)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n")
    assert joined(get_template("deepseekr1").render(reply, bos_token="<s>", eos_token="</s>")) == (
        "<s><｜User｜>Hi<｜Assistant｜><think>\n\n</think>\n\nHello</s>")
    assert joined(get_template("glm4_7", enable_thinking=False).render(reply)) == (
        "[gMASK]<sop><|user|>\nHi<|assistant|></think>\nHello")


def llamafactory_render(fmt: dict, messages: list[dict], system: str | None, bos: str, eos: str) -> str:
    """What LLaMA-Factory's Template._encode writes (its formats in llamafactory_formats.json, from its template.py):
    prefix, the system block (or the default) before the first user turn (inside it for Llama2Template), each
    reply through format_assistant, a reasoning reply without a thought after the empty thought, and with
    efficient_eos one eos at the end of the sequence."""
    def fill(slot: str, content: str) -> str:
        return slot.replace("{bos}", bos).replace("{eos}", eos).replace("{content}", content)

    system = system or fmt["default_system"]
    text = fill(fmt["prefix"], "")
    for index, message in enumerate(messages):
        if message["role"] == "user":
            block = fill(fmt["system"], system) if index == 0 and system else ""
            user = fill(fmt["user"], block + message["content"]) if fmt["system_in_user"] else block + fill(
                fmt["user"], message["content"])
            text += user
        else:
            text += (fmt["empty_thought"] if fmt["reasoning"] else "") + fill(fmt["assistant"], message["content"])
    return text + (eos if fmt["efficient_eos"] else "")


def test_text_equals_llamafactory_except_where_documented():
    """Every LLaMA-Factory name writes LLaMA-Factory's text, but those docs/templates.md lists with a reason (they
    follow the model's official template, or end replies differently)."""
    script = docs_script()
    formats = json.loads((FIXTURES / "llamafactory_formats.json").read_text(encoding="utf-8"))
    one = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    two = [*one, {"role": "user", "content": "And you?"}, {"role": "assistant", "content": "Fine, thanks."}]
    differ = set()
    for name, fmt in formats.items():
        template = get_template(name)
        for messages in [one] if fmt["reasoning"] else [one, two]:
            for system in (None, "Be brief."):
                ours = joined(template.render(messages, system, bos_token="<s>", eos_token="</s>"))
                if ours != llamafactory_render(fmt, messages, system, "<s>", "</s>"):
                    differ.add(name)
    assert differ == set(script.LF_DIFFERENCES)
    assert len(formats) - len(differ) >= 80


def test_extends_and_aliases(tmp_path):
    qwen, vl = get_template("qwen"), get_template("qwen2_vl")
    assert vl.default_system == "You are a helpful assistant." and vl.tools_format == qwen.tools_format
    assert vl.detect == () and vl.model_types == ()  # identity is not inherited
    assert get_template("llava_next_qwen") == vl and "llava_next_qwen" in vl.aliases
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: nope\n")
    with pytest.raises(LitFactoryError, match=r"loop\.yaml: extends 'nope', which is not a shipped template"):
        get_template(str(loop))
    bad = tmp_path / "bad.yaml"
    bad.write_text("thought_words: ['<think>']\n")
    with pytest.raises(LitFactoryError, match=r"bad\.yaml: field 'thought_words' must be \[open, close\]"):
        get_template(str(bad))
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: qwen3\nkeep_thoughts: true\n")
    kept = joined(get_template(str(mine)).render(CONVERSATION))
    assert kept.count("<think>") == 2 and "First 2 + 2 = 4." in kept


def test_auto_picks_reasoning_families(tmp_path, qwen_tokenizer):
    qwen3 = (FIXTURES / "qwen3.jinja").read_text()
    assert detect_template_name(SimpleNamespace(chat_template=qwen3)) == "qwen3"
    assert detect_template_name(qwen_tokenizer) == "qwen"
    for model_type, chat_template, family in (("qwen3_moe", qwen3, "qwen3"), ("gpt_oss", None, "gpt_oss"),
                                              ("gemma3_text", (FIXTURES / "gemma-2-it.jinja").read_text(), "gemma"),
                                              ("qwen2", qwen3, "qwen3"), ("exaone", None, "exaone")):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        tokenizer = SimpleNamespace(chat_template=chat_template, name_or_path=str(folder))
        assert detect_template_name(tokenizer) == family, model_type


def test_enable_thinking_from_a_llamafactory_yaml_through_the_data_module(qwen_tokenizer, peer_data_dir):
    """LLaMA-Factory's `enable_thinking` becomes data.enable_thinking; the data module's rows (cached per setting)
    put the loss on the empty thought block when thinking, on the answer alone when not."""
    from lit_factory.compat.llamafactory import translate
    from lit_factory.data.datamodule import DataModule

    config = {"model_name_or_path": "m", "stage": "sft", "dataset": "alpaca_en_demo", "template": "qwen3",
              "enable_thinking": False}
    data = translate(config).recipe["data"]["init_args"]
    assert data["template"] == "qwen3" and data["enable_thinking"] is False
    assert "enable_thinking" not in translate({**config, "enable_thinking": None}).recipe["data"]["init_args"]
    outputs = [row["output"] for row in json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())[:4]]
    for enable_thinking in (True, False):
        module = DataModule("alpaca_en_demo", dataset_dir=str(peer_data_dir), tokenizer=qwen_tokenizer,
                            template=data["template"], enable_thinking=enable_thinking, cutoff_len=4096,
                            max_samples=4, shuffle=False)
        module.setup("fit")
        empty = "<think>\n\n</think>\n\n"
        for row, output in zip(module.train_set, outputs):
            labelled = qwen_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
            text = qwen_tokenizer.decode(row["input_ids"])
            assert labelled == (empty if enable_thinking else "") + output + "<|im_end|>"
            assert text.endswith("<|im_start|>assistant\n" + empty + output + "<|im_end|>\n")


def docs_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_templates_md", ROOT / "docs" / "make_templates_md.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_docs_templates_table_is_current():
    from test_data_template_families import REFERENCES

    script = docs_script()
    assert sorted(script.SHARED_REFERENCES) == sorted(REFERENCES)  # the table says what the tests check
    generated = subprocess.run([sys.executable, str(ROOT / "docs" / "make_templates_md.py"), "--stdout"],
                               capture_output=True, text=True, check=True).stdout
    assert generated == (ROOT / "docs" / "templates.md").read_text(encoding="utf-8")
    assert all(f"| `{name}` |" in generated for name in available_templates())
