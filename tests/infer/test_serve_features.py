"""`lit-factory serve`: `stream_options.include_usage`, `response_format` (JSON constrained decoding), the legacy
`/v1/completions` endpoint, 400 for fields that would change the reply but are not implemented, and a short request
answered during a long stream (fair scheduling). Live server on
loopback, driven by the official `openai` client; references are plain transformers `generate` and `json`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

openai = pytest.importorskip("openai")

from serving import running_server  # noqa: E402
from tiny_models import save_peaked_chat_model  # noqa: E402

KEY, NAME = "test-key", "tiny"
QUESTION = [{"role": "user", "content": "Who are you?"}]
OTHER = [{"role": "user", "content": "Where do you live?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_peaked_chat_model(tmp_path_factory.mktemp("tiny-serve-features"))


@pytest.fixture(scope="module")
def api(saved_model: Path) -> Iterator["openai.OpenAI"]:
    from test_serve import client

    with running_server(saved_model, "--max_new_tokens", "12", "--model-name", NAME, key=KEY) as port:
        yield client(port)


@pytest.fixture(scope="module")
def reference(saved_model: Path):
    """Greedy continuation of raw text with plain transformers (the legacy completion's reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    model = AutoModelForCausalLM.from_pretrained(saved_model).eval()

    def continuation(prompt: str, max_new_tokens: int) -> tuple[str, int, int]:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
        new = output[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), inputs["input_ids"].shape[1], len(new)

    return continuation


def test_stream_with_include_usage_ends_with_a_usage_chunk(api) -> None:
    whole = api.chat.completions.create(model=NAME, messages=QUESTION)
    chunks = list(api.chat.completions.create(model=NAME, messages=QUESTION, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content
    plain = list(api.chat.completions.create(model=NAME, messages=QUESTION, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in plain)  # no usage chunk unless asked


def test_response_format_json_object_and_json_schema_are_enforced(api) -> None:
    free = api.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=200)
    with pytest.raises(json.JSONDecodeError):  # the tiny model's own reply is no JSON: the constraint does the work
        json.loads(free.choices[0].message.content)

    mode = api.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=200,
                                       response_format={"type": "json_object"})
    assert mode.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(mode.choices[0].message.content), dict)  # strict JSON (no raw control characters)

    schema = {"type": "object", "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["km", "mi"]}},
              "required": ["answer", "unit"], "additionalProperties": False}
    typed = api.chat.completions.create(
        model=NAME, messages=QUESTION, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "distance", "schema": schema}})
    assert typed.choices[0].finish_reason == "stop"
    value = json.loads(typed.choices[0].message.content)
    assert set(value) == {"answer", "unit"} and isinstance(value["answer"], int) and value["unit"] in ("km", "mi")

    streamed = api.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=200, stream=True,
                                           response_format={"type": "json_object"})
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == mode.choices[0].message.content

    with pytest.raises(openai.BadRequestError, match="json_schema.schema"):
        api.chat.completions.create(model=NAME, messages=QUESTION,
                                    response_format={"type": "json_schema", "json_schema": {"name": "x"}})


def test_legacy_completions_continue_raw_text(api, reference) -> None:
    text, prompt_tokens, new_tokens = reference(PROMPT, 8)
    completion = api.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == text
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, new_tokens)
    assert completion.choices[0].finish_reason == ("length" if new_tokens == 8 else "stop")

    chunks = list(api.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == new_tokens
    echoed = api.completions.create(model=NAME, prompt=[PROMPT], max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + text
    # No max_tokens: OpenAI's default of 16 (not the server's chat default of 12).
    assert api.completions.create(model=NAME, prompt=PROMPT, temperature=0).choices[0].text == reference(PROMPT, 16)[0]


def test_fields_that_would_change_the_reply_are_400_naming_them(api) -> None:
    for field, value in (("seed", 1), ("logprobs", True), ("n", 2), ("frequency_penalty", 0.5),
                         ("logit_bias", {"1": 5}), ("tool_choice", "required")):
        with pytest.raises(openai.BadRequestError) as raised:
            api.chat.completions.create(model=NAME, messages=QUESTION, extra_body={field: value})
        assert raised.value.body["param"] == field and raised.value.body["code"] == "unsupported_field"
    for field, value in (("logprobs", 2), ("suffix", "end"), ("best_of", 3)):
        with pytest.raises(openai.BadRequestError, match=field):
            api.completions.create(model=NAME, prompt=PROMPT, extra_body={field: value})
    with pytest.raises(openai.BadRequestError, match="2 prompts"):
        api.completions.create(model=NAME, prompt=[PROMPT, PROMPT])
    # Neutral values and bookkeeping fields are accepted: the reply is the same as without them.
    plain = api.chat.completions.create(model=NAME, messages=QUESTION).choices[0].message.content
    neutral = api.chat.completions.create(model=NAME, messages=QUESTION, frequency_penalty=0, presence_penalty=0,
                                          n=1, user="someone", logprobs=False, metadata={"k": "v"}, store=False)
    assert neutral.choices[0].message.content == plain


def test_a_short_request_finishes_during_a_long_stream(api, saved_model: Path) -> None:
    """Fair scheduling on the server (the step-level check is in tests/infer/test_serve_fairness.py)."""
    from lit_factory.infer.engine import ChatEngine, GenerationArgs
    from lit_factory.model.builder import ModelArgs

    long_tokens, short_tokens = 480, 8  # long enough that an HTTP round trip is a small part of it
    events: list[str] = []
    first_piece = threading.Event()
    long_usage = []

    def long_stream() -> None:
        for chunk in api.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=long_tokens, stream=True,
                                                 stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                first_piece.set()
            if chunk.usage is not None:
                long_usage.append(chunk.usage.completion_tokens)
        events.append("long done")

    long = threading.Thread(target=long_stream)
    long.start()
    assert first_piece.wait(timeout=120)
    short = api.chat.completions.create(model=NAME, messages=OTHER, max_tokens=short_tokens)
    events.append("short done")
    long.join(timeout=300)
    assert events == ["short done", "long done"]
    assert long_usage == [long_tokens]  # the long reply ran to max_tokens: it was in progress all along
    assert short.usage.completion_tokens == short_tokens
    engine = ChatEngine.load(ModelArgs(path=str(saved_model)), "chatml", GenerationArgs(temperature=0), "cpu")
    assert short.choices[0].message.content == engine.chat(OTHER, max_new_tokens=short_tokens).text
