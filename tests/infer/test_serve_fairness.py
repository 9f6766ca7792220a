"""Fair scheduling (issue 14): concurrent generations take turns at every token, so a short request that arrives
during a long one finishes in about twice its own steps, before the long one, with the same replies as alone.
In-process with a step log (which request ran each forward pass); on a live server, see tests/infer/test_serve_features.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lit_factory.infer.engine import ChatEngine, GenerationArgs
from lit_factory.model.builder import ModelArgs
from tiny_models import save_peaked_chat_model

LONG, SHORT = 200, 8  # new tokens of the long and the short request
QUESTION = [{"role": "user", "content": "Who are you?"}]
OTHER = [{"role": "user", "content": "Where do you live?"}]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-fair"))


@pytest.fixture(scope="module")
def engine(saved_model: Path) -> ChatEngine:
    return ChatEngine.load(ModelArgs(path=str(saved_model)), "chatml", GenerationArgs(LONG, temperature=0), "cpu")


def test_short_request_takes_turns_with_a_long_one_and_gets_the_same_reply(engine: ChatEngine) -> None:
    solo_long = engine.chat(QUESTION, max_new_tokens=LONG)
    solo_short = engine.chat(OTHER, max_new_tokens=SHORT)
    assert solo_long.completion_tokens == LONG and solo_short.completion_tokens == SHORT  # neither stops early

    steps: list[str] = []  # the thread that ran each forward pass (one per generated token, prefill included)
    forward = engine.model.forward

    def logged_forward(*args, **kwargs):
        steps.append(threading.current_thread().name)
        return forward(*args, **kwargs)

    replies = {}

    def ask(name: str, messages: list, tokens: int) -> None:
        replies[name] = engine.chat(messages, max_new_tokens=tokens)

    engine.model.forward = logged_forward
    try:
        long = threading.Thread(target=ask, args=("long", QUESTION, LONG), name="long")
        long.start()
        while steps.count("long") < 10:
            time.sleep(0.001)
        short = threading.Thread(target=ask, args=("short", OTHER, SHORT), name="short")
        short.start()
        short.join(timeout=120)
        long.join(timeout=120)
    finally:
        del engine.model.forward  # back to the class's forward

    assert steps.count("short") == SHORT and steps.count("long") == LONG
    first, last = steps.index("short"), len(steps) - 1 - steps[::-1].index("short")
    # While the short one ran, the long one got one step per short step (round-robin), not its whole reply.
    assert steps[first:last + 1].count("long") <= SHORT
    assert last + 1 - first <= 2 * SHORT
    assert steps[-1] == "long"  # the short one finished first
    # Taking turns changes nobody's reply: each is what it would be alone (greedy).
    assert replies["long"].text == solo_long.text and replies["short"].text == solo_short.text
