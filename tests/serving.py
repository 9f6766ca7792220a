"""Starting `lit-factory serve` on loopback for the serve tests: one copy of the port probe and the wait for the
server to answer, shared by test_serve*.py."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: Path, *options: str, key: Optional[str] = None) -> Iterator[int]:
    """Start `lit-factory serve --model MODEL --template chatml --temperature 0 OPTIONS` on a free port, yield the
    port once ``GET /v1/models`` answers 200 (the test fails with the server's output if it never does), stop it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_factory", "serve", "--model", str(model), "--template", "chatml",
         "--temperature", "0", "--port", str(port), *(["--api-key", key] if key else []), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + 180
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/v1/models", headers=headers)
            if connection.getresponse().status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server did not start:\n{process.stdout.read()}")
        time.sleep(0.5)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
