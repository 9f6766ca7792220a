"""Seeded random dialogues for template parity tests: the text that breaks chat formats (surrounding and inner
whitespace, CRLF, non-ASCII, other families' control markers inside messages, empty and blank system prompts)."""

from __future__ import annotations

import random

# A fixed two-turn dialogue (multi-line replies, non-ASCII) and a system prompt for the template tests.
TWO_TURNS = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And times 3?\nShow the steps."},
    {"role": "assistant", "content": "(2 + 2) × 3 = 12.\n\nFirst add, then multiply."},
]
SYSTEM = {"role": "system", "content": "You are a careful math tutor."}

WORDS = ["hello", "world", "2 + 2 = 4", "naïve café", "数据", "東京", "привет", "مرحبا", "😀", "👩\u200d💻",
         "e\u0301", "{content}", "{eos}", "x=1;", "```py", "«quote»"]
# Control text of the families under test, written inside messages.
MARKERS = ["<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "</s>", "<s>", "<|eot_id|>", "<end_of_turn>",
           "### Response:", "<|end|>", "<<SYS>>", "USER:", "\n\nUser:", "<|endoftext|>", "<tool_call>"]
SPACES = ["", "", " ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n"]
INNER = [" ", " ", " ", "\n", "\n\n", "\n\n\n", "\r\n", "  "]


def random_text(rng: random.Random, markers: bool = True, blank_ok: bool = False) -> str:
    """A message: words, inner whitespace, sometimes a marker, with random whitespace around it."""
    if blank_ok and rng.random() < 0.1:
        return rng.choice(["", " ", "\n"])
    parts = []
    for _ in range(rng.randint(1, 6)):
        if markers and rng.random() < 0.15:
            parts.append(rng.choice(MARKERS))
        else:
            parts.append(rng.choice(WORDS))
        parts.append(rng.choice(INNER))
    return rng.choice(SPACES) + "".join(parts[:-1]) + rng.choice(SPACES)


def random_dialogue(rng: random.Random) -> list[dict[str, str]]:
    """1-3 user/assistant exchanges, with no system message, an empty or blank one, or a random one."""
    messages = []
    kind = rng.choice(["none", "none", "empty", "blank", "text"])
    if kind != "none":
        system = {"empty": "", "blank": rng.choice([" ", "\n", " \n "]), "text": None}[kind]
        messages.append({"role": "system", "content": random_text(rng) if system is None else system})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": random_text(rng, blank_ok=True)})
        messages.append({"role": "assistant", "content": random_text(rng)})
    return messages


def dialogues(seed: int, count: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [random_dialogue(rng) for _ in range(count)]
