"""`lit-factory serve` as a live server on loopback, driven by the official `openai` client (and raw HTTP for the
requests a client library would never send)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

openai = pytest.importorskip("openai")

from lit_factory.infer.engine import ChatEngine, GenerationArgs  # noqa: E402
from lit_factory.model.builder import ModelArgs  # noqa: E402
from serving import running_server  # noqa: E402
from tiny_models import save_peaked_chat_model  # noqa: E402

KEY, NAME = "test-key", "tiny"
QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-serve"))


@pytest.fixture(scope="module")
def server(saved_model: Path) -> Iterator[int]:
    with running_server(saved_model, "--max_new_tokens", "10", "--model-name", NAME, "--max-request-bytes", "4096",
                        key=KEY) as port:
        yield port


@pytest.fixture(scope="module")
def engine(saved_model: Path) -> ChatEngine:
    """The same model in-process: the reference for what the server must answer."""
    return ChatEngine.load(ModelArgs(path=str(saved_model)), "chatml", GenerationArgs(10, temperature=0), "cpu")


def request(port: int, method: str, path: str, body: bytes | None = None, key: str | None = KEY,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    status, payload = response.status, response.read()
    connection.close()
    return status, json.loads(payload) if payload else {}


def client(port: int, key: str = KEY) -> "openai.OpenAI":
    return openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)


def test_models_and_completion_match_the_engine(server: int, engine: ChatEngine) -> None:
    api = client(server)
    assert [model.id for model in api.models.list().data] == [NAME]
    completion = api.chat.completions.create(model=NAME, messages=QUESTION)
    expected = engine.chat(QUESTION)
    assert completion.choices[0].message.content == expected.text
    assert completion.choices[0].finish_reason == expected.finish_reason
    assert completion.usage.prompt_tokens == expected.prompt_tokens
    assert completion.usage.completion_tokens == expected.completion_tokens
    system = api.chat.completions.create(
        model=NAME, messages=[{"role": "system", "content": "Be brief."}, *QUESTION], max_tokens=4)
    assert system.choices[0].message.content == engine.chat(QUESTION, "Be brief.", max_new_tokens=4).text


def test_streaming_sends_the_same_reply_in_pieces(server: int, engine: ChatEngine) -> None:
    chunks = list(client(server).chat.completions.create(model=NAME, messages=QUESTION, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == engine.chat(QUESTION).text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == engine.chat(QUESTION).finish_reason


def test_stop_sequence_from_the_request(server: int, engine: ChatEngine) -> None:
    full = engine.chat(QUESTION).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    completion = client(server).chat.completions.create(model=NAME, messages=QUESTION, stop=[stop])
    assert completion.choices[0].message.content == full[: full.find(stop)]


def test_api_key_is_required(server: int) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    assert request(server, "GET", "/v1/models", key=None)[0] == 401


def test_bad_requests_get_http_errors_and_the_server_keeps_serving(server: int, engine: ChatEngine) -> None:
    api = client(server)
    with pytest.raises(openai.UnprocessableEntityError):
        api.chat.completions.create(model=NAME, messages=QUESTION, temperature=5)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="another-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="expected 'user'"):
        api.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "hi"}])
    status, body = request(server, "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert request(server, "POST", "/v1/chat/completions", json.dumps({"model": NAME}).encode())[0] == 422
    huge = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    assert request(server, "POST", "/v1/chat/completions", huge)[0] == 413
    # A body without content-length (chunked) is measured while read.
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=iter([huge[:3000], huge[3000:]]), encode_chunked=True,
                       headers={"Authorization": f"Bearer {KEY}", "Transfer-Encoding": "chunked"})
    assert connection.getresponse().status == 413
    connection.close()
    assert api.chat.completions.create(model=NAME, messages=QUESTION).choices[0].message.content == \
        engine.chat(QUESTION).text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_a_clear_error(saved_model: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_factory", "serve", "--model", str(saved_model),
                             "--backend", "vllm"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("lit-factory: error: --backend vllm: the vllm package")
