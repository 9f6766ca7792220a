"""``lit-factory chat``: talk to a model in the terminal, the reply streamed as it is generated.

    lit-factory chat --model Qwen/Qwen2.5-0.5B-Instruct --adapter runs/sft-lora/version_0 --temperature 0.7

Type a message and press Enter; ``/clear`` forgets the conversation so far, ``/exit`` (or end of input) quits.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, TextIO

if TYPE_CHECKING:
    from lit_factory.infer.engine import ChatEngine

CLEAR, EXIT = "/clear", "/exit"


def chat_loop(
    engine: "ChatEngine", system: Optional[str] = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> None:
    """Read user lines from ``stdin`` and write streamed replies to ``stdout`` until ``/exit`` or end of input."""
    messages: list[dict[str, str]] = []
    stdout.write(f"Type a message; {CLEAR} starts over, {EXIT} quits.\n")
    while True:
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
    try:
        chat_loop(engine, options.system)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0
