"""`lit-factory serve` under hostile or heavy requests: context limit, chunked bodies over the limit, deep JSON, a
bounded queue (503), and the warning for an unauthenticated public bind. Live server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi")

from serving import free_port, running_server  # noqa: E402
from tiny_models import save_peaked_chat_model  # noqa: E402

NAME = "tiny"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-serve-limits"))


@pytest.fixture(scope="module")
def port(saved_model: Path) -> Iterator[int]:
    with running_server(saved_model, "--max_new_tokens", "8", "--model-name", NAME, "--max-request-bytes", "65536",
                        "--max-queued-requests", "1") as port:
        yield port


def post(port: int, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    if chunked:
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            for start in range(0, len(body), 8192):
                piece = body[start:start + 8192]
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            connection.send(b"0\r\n\r\n")
        except OSError:  # the server may answer and close before the whole body is sent
            pass
    else:
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    status, payload = response.status, response.read()
    connection.close()
    return status, json.loads(payload) if payload else {}


def completion(content: str, **fields) -> bytes:
    return json.dumps({"model": NAME, "messages": [{"role": "user", "content": content}], **fields}).encode()


def test_prompt_longer_than_the_context_is_400_and_max_tokens_is_capped(port):
    # "word " is 3 tokens of the bundled tokenizer: 600 of them cannot fit in 512 positions.
    status, body = post(port, completion("word " * 600))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    # A prompt (~490 tokens) that fits, asking for far more tokens than remain: served within the context.
    status, body = post(port, completion("word " * 160, max_tokens=100000, temperature=0))
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] >= 480 and body["usage"]["total_tokens"] <= 512, body["usage"]


def test_chunked_body_over_the_limit_is_413_and_deep_json_is_400(port):
    status, body = post(port, completion("x" * 300_000), chunked=True)
    assert status == 413, body
    status, body = post(port, b"[" * 100_000 + b"]" * 100_000)
    assert status == 413  # over 64 KiB: refused before parsing
    status, body = post(port, b"[" * 30_000 + b"]" * 30_000)
    assert status == 400 and "nested" in body["error"]["message"], body
    assert post(port, completion("Who are you?"))[0] == 200  # still serving


def test_queue_is_bounded_503_when_full_and_frees_its_slot(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=completion("Who are you?", stream=True),
                       headers={"Content-Type": "application/json"})
    streamed = connection.getresponse()
    assert streamed.status == 200
    streamed.readline()  # the first event: the stream holds the one slot now
    status, body = post(port, completion("Who are you?"))
    assert status == 503 and body["error"]["code"] == "server_busy", body
    assert b"[DONE]" in streamed.read()
    connection.close()
    for _ in range(50):  # the slot is freed right after the last event; allow the server a moment
        status, body = post(port, completion("Who are you?"))
        if status != 503:
            break
        time.sleep(0.1)
    assert status == 200, body


def test_public_bind_without_key_warns_and_bad_port_or_port_in_use_fail_in_one_line(saved_model):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lit_factory", "serve", "--model", str(saved_model), *args],
                              capture_output=True, text=True, timeout=120)

    result = serve("--port", "99999")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--port 99999" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve("--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "another --port" in result.stderr
    # Warned before the model loads; the port is free, so stop the server as soon as the warning is out.
    process = subprocess.Popen([sys.executable, "-m", "lit_factory", "serve", "--model", str(saved_model),
                                "--host", "0.0.0.0", "--port", str(free_port())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stderr.readline()
    finally:
        process.kill()
        process.wait(timeout=30)
    assert "without --api-key" in first_line
