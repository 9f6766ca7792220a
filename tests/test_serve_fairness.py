"""Fair scheduling (issue 14): concurrent generations take turns at every token, so a short request that arrives
during a long one finishes in about twice its own steps, before the long one, with the same replies as alone.
In-process with a step log (which request ran each forward pass), then on a live server with the `openai` client."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from lit_factory.infer.engine import ChatEngine, GenerationArgs
from lit_factory.model.builder import ModelArgs
from tiny_models import save_peaked_chat_model

LONG, SHORT = 200, 8  # new tokens of the long and the short request
LIVE_LONG = 480  # on the server: long enough that an HTTP round trip is a small part of it
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


@pytest.fixture(scope="module")
def server(saved_model: Path) -> Iterator[int]:
    from test_serve import request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_factory", "serve", "--model", str(saved_model), "--template", "chatml",
         "--temperature", "0", "--port", str(port), "--model-name", "tiny", "--api-key", "test-key"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            if request(port, "GET", "/v1/models")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server did not start:\n{process.stdout.read()}")
        time.sleep(0.5)
    yield port
    process.terminate()
    process.wait(timeout=30)


def test_server_answers_a_short_request_during_a_long_stream(server: int, engine: ChatEngine) -> None:
    from test_serve import client

    api = client(server)
    events: list[str] = []
    first_piece = threading.Event()
    long_usage = []

    def long_stream() -> None:
        for chunk in api.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=LIVE_LONG, stream=True,
                                                 stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first_piece.set()
            if chunk.usage is not None:
                long_usage.append(chunk.usage.completion_tokens)
        events.append("long done")

    long = threading.Thread(target=long_stream)
    long.start()
    assert first_piece.wait(timeout=120)
    short = api.chat.completions.create(model="tiny", messages=OTHER, max_tokens=SHORT)
    events.append("short done")
    long.join(timeout=300)
    assert events == ["short done", "long done"]
    assert long_usage == [LIVE_LONG]  # the long reply ran to max_tokens: it was in progress all along
    assert short.usage.completion_tokens == SHORT
    assert short.choices[0].message.content == engine.chat(OTHER, max_new_tokens=SHORT).text
