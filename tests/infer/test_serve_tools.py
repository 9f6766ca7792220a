"""Tool calling through `serve`: the template's tool-call format read back from replies, and OpenAI tool messages
rendered as the template's function/observation turns. The replies are scripted (a random tiny model writes no tool
calls); the server, the template and the `openai` client are the real ones."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Iterator

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from lit_factory.data.templates import get_template  # noqa: E402
from lit_factory.infer.engine import Reply, StreamedReply  # noqa: E402
from lit_factory.infer.serve import create_app  # noqa: E402
from lit_factory.infer.tool_calls import parse_tool_calls  # noqa: E402

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "中山"}}]


def template_written_calls(template_name: str, calls: list[dict]) -> str:
    """The reply text the template trains a model to write for ``calls`` (its loss-bearing function turn)."""
    template = get_template(template_name)
    segments = template.render([{"role": "user", "content": "Weather?"},
                                {"role": "function", "content": json.dumps(calls, ensure_ascii=False)}])
    reply = "".join(text for text, loss in segments if loss)
    for stop in template.stop_words:
        reply = reply.replace(stop, "")
    return reply


def test_parse_reads_back_what_the_template_writes() -> None:
    text = template_written_calls("qwen", CALLS)
    assert "<tool_call>" in text
    assert parse_tool_calls(get_template("qwen"), text) == [
        {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)} for c in CALLS]
    assert parse_tool_calls(get_template("qwen"), "It is sunny in Paris.") is None
    assert parse_tool_calls(get_template("qwen"), "<tool_call>\nnot json\n</tool_call>") is None


class ScriptedEngine:
    """The engine interface over a fixed reply; records the prompts it was asked to continue."""

    def __init__(self, reply: str) -> None:
        from lit_factory.infer.engine import GenerationArgs

        self.generation = GenerationArgs()  # the server caps max_tokens from these defaults
        self.template = get_template("qwen")
        self.reply = reply
        self.prompts: list[str] = []

    def encode(self, messages, system=None, tools=""):
        prompt = self.template.render_prompt(messages, system, tools=tools)
        self.prompts.append(prompt)
        return list(prompt.encode())

    def chat(self, messages, system=None, stop=(), tools="", **overrides) -> Reply:
        return Reply(self.reply, len(self.encode(messages, system, tools)), 7, "stop")

    def stream(self, messages, system=None, stop=(), tools="", **overrides) -> StreamedReply:
        self.encode(messages, system, tools)
        return StreamedReply(iter([self.reply[:5], self.reply[5:]]), 3)


@pytest.fixture
def serve_scripted() -> Iterator:
    servers = []

    def start(engine: ScriptedEngine) -> "openai.OpenAI":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(engine, "scripted"), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        servers.append(server)
        return openai.OpenAI(api_key="none", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)

    yield start
    for server in servers:
        server.should_exit = True


def test_tool_calls_come_back_as_openai_tool_calls(serve_scripted) -> None:
    engine = ScriptedEngine(template_written_calls("qwen", CALLS))
    api = serve_scripted(engine)
    question = [{"role": "user", "content": "Weather in Paris and Zhongshan?"}]
    completion = api.chat.completions.create(model="scripted", messages=question, tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        (c["name"], c["arguments"]) for c in CALLS]
    assert '"name": "get_weather"' in engine.prompts[-1] and "<tools>" in engine.prompts[-1]  # tools reached it

    chunks = list(api.chat.completions.create(model="scripted", messages=question, tools=[WEATHER], stream=True))
    streamed_calls = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name) for c in streamed_calls] == [(0, "get_weather"), (1, "get_weather")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # Without tools in the request the same text is plain content.
    plain = api.chat.completions.create(model="scripted", messages=question)
    assert plain.choices[0].message.content == engine.reply and plain.choices[0].message.tool_calls is None


def test_tool_history_renders_as_function_and_observation_turns(serve_scripted) -> None:
    engine = ScriptedEngine("It is sunny in Paris.")
    api = serve_scripted(engine)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    completion = api.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    assert completion.choices[0].message.content == "It is sunny in Paris." and \
        completion.choices[0].finish_reason == "stop"
    expected = get_template("qwen").render_prompt(
        [{"role": "user", "content": "Weather in Paris?"},
         {"role": "function", "content": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}}])},
         {"role": "observation", "content": "sunny, 21 C"}], tools=json.dumps([WEATHER]))
    assert engine.prompts[-1] == expected
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in expected


def test_tool_history_with_text_parallel_calls_and_empty_system_equals_apply_chat_template(serve_scripted,
                                                                                        qwen_tokenizer) -> None:
    engine = ScriptedEngine("Sunny in Paris, rainy in Rome.")
    api = serve_scripted(engine)
    calls = [{"name": "get_weather", "arguments": {"city": city}} for city in ("Paris", "Rome")]
    messages = [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for i, c in enumerate(calls)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"},
    ]
    api.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    reference = [*messages[:2], {"role": "assistant", "content": "Checking both.",
                                 "tool_calls": [{"type": "function", "function": c} for c in calls]},
                 {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "rainy"}]
    assert engine.prompts[-1] == qwen_tokenizer.apply_chat_template(
        reference, tools=[WEATHER], add_generation_prompt=True, tokenize=False)


def test_text_before_the_calls_comes_back_as_content(serve_scripted) -> None:
    text = "Let me check.\n" + template_written_calls("qwen", CALLS[:1])
    api = serve_scripted(ScriptedEngine(text))
    choice = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Weather?"}],
                                         tools=[WEATHER]).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
