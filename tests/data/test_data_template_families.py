"""Every template family with a reference jinja in ../shared/chat-templates renders exactly like it, and its loss
mask covers exactly the assistant replies (found from the reference alone, by rendering growing prefixes).

Known reference differences, each handled in REFERENCES below and explained in the family's YAML:
* amberchat, chatqa, falcon, solar: the reference ends a reply with no end-of-turn token; we write eos so the model
  learns to stop, so these compare with eos_token="".
* gemma: the reference omits the bos token the official template writes (compared with bos_token="").
* mistral, gemma, phi (phi-3-mini), saiga, vicuna, granite: the reference accepts a system message where the
  official template refuses it or adds a default one; we follow the reference (no default system prompt).

Odd reference behaviours we follow (the property test over random dialogues checks each of them):
* most references strip each message (`| trim`); openchat strips only the system prompt; qwen and granite strip
  nothing (blank and padded messages are written as they are).
* an explicitly empty system message is written as an empty system block (qwen: no default prompt then).
* llama2 and gemma strip the system block and the first user message as one string: with a system prompt the user
  message keeps its leading whitespace, and gemma's empty system block ("\\n\\n") disappears entirely.
* falcon rewrites CRLF to LF and then blank lines to single newlines in one left-to-right pass (three newlines
  become two), in every message but the system prompt.
"""

from __future__ import annotations

import pytest

from dialogues import SYSTEM, TWO_TURNS, dialogues
from lit_factory.data.templates import available_templates, get_template

CASES = {
    "single_turn": TWO_TURNS[:2],
    "multi_turn": TWO_TURNS,
    "single_turn_system": [SYSTEM, *TWO_TURNS[:2]],
    "multi_turn_system": [SYSTEM, *TWO_TURNS],
}
# family -> (reference jinja, special tokens for both renderings)
REFERENCES = {
    "qwen": ("qwen2.5-instruct", {}),
    "chatml": ("chatml", {"bos_token": "<s>", "eos_token": "<|im_end|>"}),
    "llama3": ("llama-3-instruct", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama2": ("llama-2-chat", {"bos_token": "<s>", "eos_token": "</s>"}),
    "mistral": ("mistral-instruct", {"bos_token": "<s>", "eos_token": "</s>"}),
    "gemma": ("gemma-it", {"bos_token": "", "eos_token": "<eos>"}),
    "phi": ("phi-3", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
    "phi_small": ("phi-3-small", {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    "zephyr": ("zephyr", {"bos_token": "<s>", "eos_token": "</s>"}),
    "vicuna": ("vicuna", {"bos_token": "<s>", "eos_token": "</s>"}),
    "alpaca": ("alpaca", {"bos_token": "<s>", "eos_token": "</s>"}),
    "amberchat": ("amberchat", {"bos_token": "<s>", "eos_token": ""}),
    "chatqa": ("chatqa", {"bos_token": "<|begin_of_text|>", "eos_token": ""}),
    "falcon": ("falcon-instruct", {"bos_token": "", "eos_token": ""}),
    "openchat": ("openchat-3.5", {"bos_token": "<s>", "eos_token": "</s>"}),
    "solar": ("solar-instruct", {"bos_token": "<s>", "eos_token": ""}),
    "granite": ("granite-3.0-instruct", {"bos_token": "", "eos_token": "<|end_of_text|>"}),
    "saiga": ("saiga", {"bos_token": "<s>", "eos_token": "</s>"}),
}


def messages_for(family: str, case: str) -> list[dict[str, str]]:
    return [dict(m) for m in CASES[case]]


def test_at_least_30_families_and_all_load():
    names = available_templates()
    assert len(names) >= 31 and {"default", "empty", "qwen", "llama2", "llama3", "mistral", "gemma", "glm4"} <= set(names)
    for name in names:
        template = get_template(name)
        assert "{content}" not in template.render_prompt([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", REFERENCES)
def test_rendering_and_loss_mask_match_reference_jinja(family, case, render_reference_template):
    reference, tokens = REFERENCES[family]
    messages = messages_for(family, case)
    template = get_template(family)
    segments = template.render(messages, **tokens)
    assert "".join(text for text, _ in segments) == render_reference_template(reference, messages, **tokens)
    assert template.render_prompt(messages[:-1], **tokens) == render_reference_template(
        reference, messages[:-1], add_generation_prompt=True, **tokens)

    # The reply text of each assistant message, from the reference alone: what rendering it adds after the
    # generation prompt. Our loss-bearing segments are exactly these, minus whitespace that follows the reply.
    replies = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = render_reference_template(reference, messages[:index], add_generation_prompt=True, **tokens)
            after = render_reference_template(reference, messages[: index + 1], **tokens)
            assert after.startswith(before)
            replies.append(after[len(before):])
    loss_segments = [text for text, is_loss in segments if is_loss]
    assert len(loss_segments) == len(replies)
    for ours, reply in zip(loss_segments, replies):
        assert reply.startswith(ours) and not reply[len(ours):].strip(), (ours, reply)


def reference_reply_spans(render, reference: str, messages: list[dict], **tokens: str) -> list[tuple[int, int]]:
    """Where each assistant reply lies in the reference rendering, found from the reference alone: what rendering the
    message adds after the generation prompt, minus the whitespace after it (never generated, so no loss)."""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            before = render(reference, messages[:index], add_generation_prompt=True, **tokens)
            after = render(reference, messages[: index + 1], **tokens)
            assert after.startswith(before)
            spans.append((len(before), len(before) + len(after[len(before):].rstrip())))
    return spans


@pytest.mark.parametrize("family", REFERENCES)
def test_random_dialogues_render_and_mask_like_the_reference(family, render_reference_template):
    """150 seeded dialogues per family (empty/blank systems, padded and blank messages, CRLF, non-ASCII, other
    families' markers inside messages, 1-3 exchanges): same text, same generation prompt, and the loss-bearing
    pieces at exactly the reference's reply positions."""
    reference, tokens = REFERENCES[family]
    template = get_template(family)
    for messages in dialogues(seed=12, count=150):
        segments = template.render(messages, **tokens)
        assert "".join(text for text, _ in segments) == render_reference_template(reference, messages, **tokens), \
            messages
        spans, position = [], 0
        for text, is_loss in segments:
            if is_loss:
                spans.append((position, position + len(text)))
            position += len(text)
        assert spans == reference_reply_spans(render_reference_template, reference, messages, **tokens), messages
        assert template.render_prompt(messages[:-1], **tokens) == render_reference_template(
            reference, messages[:-1], add_generation_prompt=True, **tokens), messages


def test_generated_dialogues_cover_the_hard_cases():
    generated = dialogues(seed=12, count=150)
    systems = [m[0]["content"] for m in generated if m[0]["role"] == "system"]
    texts = [message["content"] for messages in generated for message in messages]
    assert "" in systems and any(s and not s.strip() for s in systems)
    assert sum(len(m) > 3 for m in generated) > 50  # multi-turn
    assert any(t != t.strip() for t in texts) and any("\r\n" in t for t in texts) and any("\n\n\n" in t for t in texts)
    assert all(any(needle in t for t in texts) for needle in ("数据", "<|im_end|>", "[INST]", "</s>"))
