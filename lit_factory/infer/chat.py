"""``lit-factory chat``: talk to a model in the terminal, the reply streamed as it is generated.

    lit-factory chat --model Qwen/Qwen2.5-0.5B-Instruct --adapter runs/sft-lora/version_0 --temperature 0.7
    lit-factory chat --config runs/sft-lora/version_0/config.yaml     # model, adapter, template of a run

Type a message and press Enter; ``/clear`` forgets the conversation so far, ``/exit`` (or end of input) quits. In a
terminal, lines can be edited and earlier ones recalled with the arrow keys (Python's ``readline``); the history is
kept in ``$XDG_CACHE_HOME/lit-factory/chat_history`` (``~/.cache/...`` by default) across sessions. The first line
says which chat template is used (and that ``--template auto`` chose it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TextIO

if TYPE_CHECKING:
    from lit_factory.infer.engine import ChatEngine

CLEAR, EXIT = "/clear", "/exit"
HISTORY_LENGTH = 1000


def history_file() -> Path:
    """Where the chat's line history is kept (the user's cache folder)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lit-factory" / "chat_history"


def terminal_reader() -> Optional[tuple[Callable[[str], str], Callable[[], None]]]:
    """``(read_line, save_history)`` with readline's line editing and the saved history, or None where there is
    no readline (Windows' Python) or stdin is not a terminal (piped input reads plain lines)."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:
        return None
    path = history_file()
    try:
        readline.read_history_file(path)
    except OSError:  # no history yet (or unreadable): start empty
        pass
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as err:  # a read-only home must not fail the chat at exit
            print(f"lit-factory chat: warning: history not saved to {path}: {err.strerror}", file=sys.stderr)

    return input, save


def chat_loop(
    engine: "ChatEngine", system: Optional[str] = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
    read_line: Optional[Callable[[str], str]] = None,
) -> None:
    """Read user lines (``read_line(prompt)``, else from ``stdin``) and write streamed replies to ``stdout`` until
    ``/exit`` or end of input."""
    messages: list[dict[str, str]] = []
    stdout.write(f"Type a message; {CLEAR} starts over, {EXIT} quits.\n")
    while True:
        if read_line is not None:
            stdout.flush()
            try:
                line = read_line("User: ") + "\n"
            except EOFError:
                line = ""
        else:
            stdout.write("User: ")
            stdout.flush()
            line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return
        text = line.strip()
        if text == EXIT:
            return
        if text == CLEAR:
            messages = []
            stdout.write("History cleared.\n")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        stdout.write("Assistant: ")
        reply = engine.stream(messages, system)
        for piece in reply:
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        messages.append({"role": "assistant", "content": reply.text})


def main(argv: list[str]) -> int:
    """Entry of ``lit-factory chat``."""
    from lit_factory.infer.options import load_engine, model_parser

    parser = model_parser("lit-factory chat", "Chat with a model in the terminal; replies stream as generated.")
    parser.add_argument("--system", default=None, help="System prompt (default: the template's).")
    options = parser.parse_args(argv)
    engine = load_engine(options)
    chosen = " (chosen by --template auto from the tokenizer)" if options.template == "auto" else ""
    print(f"Template: {engine.template_name}{chosen}")
    reader = terminal_reader()
    try:
        chat_loop(engine, options.system, read_line=reader[0] if reader else None)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        if reader is not None:
            reader[1]()
    return 0
