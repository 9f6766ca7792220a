"""`lit-factory chat` driven through stdin in a subprocess, with a tiny model saved to a temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lit_factory.infer.engine import ChatEngine, GenerationArgs
from lit_factory.model.builder import ModelArgs
from tiny_models import save_peaked_chat_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def run_chat(model: Path, lines: list[str], *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_factory", "chat", "--model", str(model), "--template", "chatml",
         "--temperature", "0", "--max_new_tokens", "10", *options],
        input="".join(line + "\n" for line in lines), capture_output=True, text=True, timeout=300,
    )


def replies(stdout: str) -> list[str]:
    # stdout: banner, then per input "User: " followed by "Assistant: <reply>\n" (a reply may hold newlines).
    turns = stdout.split("User: ")[1:]
    return [turn[len("Assistant: "):-1] for turn in turns if turn.startswith("Assistant: ")]


def test_chat_keeps_history_clears_and_exits(saved_model: Path) -> None:
    system = "You are a pirate."
    result = run_chat(saved_model, ["Who are you?", "Where do you live?", "/clear", "Who are you?", "/exit",
                                    "never read"], "--system", system)
    assert result.returncode == 0, result.stderr
    first, second, third = replies(result.stdout)
    assert "History cleared." in result.stdout
    assert result.stdout.count("User: ") == 5  # nothing read after /exit

    engine = ChatEngine.load(ModelArgs(path=str(saved_model)), "chatml", GenerationArgs(10, temperature=0), "cpu")
    question = {"role": "user", "content": "Who are you?"}
    assert first == engine.chat([question], system).text
    assert first != engine.chat([question]).text  # the system prompt reached the model
    with_history = [question, {"role": "assistant", "content": first}, {"role": "user", "content": "Where do you live?"}]
    assert second == engine.chat(with_history, system).text  # the second turn saw the first
    assert third == first  # /clear forgot the history

    at_end_of_input = run_chat(saved_model, ["Who are you?"])
    assert at_end_of_input.returncode == 0 and replies(at_end_of_input.stdout) == [engine.chat([question]).text]


def test_chat_bad_option_is_one_line(saved_model: Path) -> None:
    result = run_chat(saved_model, [], "--temperature", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("lit-factory: error: generation.temperature=-1")
