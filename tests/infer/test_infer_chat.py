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


def test_chat_says_which_template_it_uses(saved_model: Path) -> None:
    from lit_factory.data.templates import detect_template_name
    from lit_factory.model.builder import build_tokenizer

    detected = detect_template_name(build_tokenizer(ModelArgs(path=str(saved_model))))
    chosen = run_chat(saved_model, ["/exit"], "--template", "auto")  # the later --template wins
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.splitlines()[0] == f"Template: {detected} (chosen by --template auto from the tokenizer)"
    named = run_chat(saved_model, ["/exit"])
    assert named.stdout.splitlines()[0] == "Template: chatml"


@pytest.mark.slow
def test_chat_in_a_terminal_edits_lines_and_keeps_history(saved_model: Path, tmp_path: Path) -> None:
    """In a pseudo-terminal: the up arrow recalls the previous line (readline), the history is saved in the cache
    folder at exit and recalled by the next session."""
    import os
    import pty
    import select
    import time

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm"}
    up = "\x1b[A"

    def session(keys: list[str]) -> str:
        """Type each of ``keys`` once the chat is waiting for a line; the whole terminal output."""
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "lit_factory", "chat", "--model", str(saved_model), "--template", "chatml",
             "--temperature", "0", "--max_new_tokens", "5"],
            stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True)
        os.close(terminal)
        output, pending, deadline = b"", list(keys), time.monotonic() + 240
        prompts_seen = 0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    data = os.read(controller, 4096)
                except OSError:  # the chat exited and closed the terminal
                    break
                if not data:
                    break
                output += data
            if pending and output.count(b"User: ") > prompts_seen:
                prompts_seen = output.count(b"User: ")
                os.write(controller, pending.pop(0).encode())
            if process.poll() is not None and not ready:
                break
        process.wait(timeout=30)
        os.close(controller)
        assert process.returncode == 0, output.decode(errors="replace")
        return output.decode(errors="replace")

    first = session(["Who are you?\r", up + "\r", "/exit\r"])
    assert first.count("Assistant: ") == 2  # the recalled line was sent again
    history = (tmp_path / "cache" / "lit-factory" / "chat_history").read_text().splitlines()
    assert history[-2:] == ["Who are you?", "/exit"]  # Python's readline keeps one of two equal lines in a row
    second = session([up + up + "\r", "/exit\r"])  # the saved history: two lines up is "Who are you?"
    assert second.count("Assistant: ") == 1
    engine = ChatEngine.load(ModelArgs(path=str(saved_model)), "chatml", GenerationArgs(5, temperature=0), "cpu")
    assert engine.chat([{"role": "user", "content": "Who are you?"}]).text in second
