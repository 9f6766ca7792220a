"""``lit-factory serve``: an OpenAI-compatible HTTP API over a chat engine (FastAPI + uvicorn, SSE streaming).

    lit-factory serve --model Qwen/Qwen2.5-0.5B-Instruct --adapter runs/sft-lora/version_0 --api-key SECRET

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events,
ending with ``data: [DONE]``), so the official ``openai`` client works with ``base_url="http://127.0.0.1:8000/v1"``.
With ``tools`` in the request, the definitions go into the prompt through the template's tool format and a reply
written in the template's tool-call format comes back as ``tool_calls`` (finish reason ``tool_calls``); streamed,
such a reply arrives as one delta once complete. Conversation history may carry assistant ``tool_calls`` and
``tool`` results, rendered as the template's function and observation turns.
Bad requests get OpenAI-shaped error bodies: 400 (not JSON, or a conversation the template cannot render), 401
(missing/wrong API key), 404 (other model name), 413 (body over ``--max-request-bytes``), 422 (fields of the wrong
type or out of range); the server keeps serving. Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request) at run time.
import importlib.util
import json
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lit_factory.errors import LitFactoryError
from lit_factory.infer.tool_calls import parse_tool_calls, text_besides_tool_calls

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lit_factory.infer.engine import ChatEngine


class TextPart(BaseModel):
    """One part of a message's content list (only text parts: the models served here read text)."""

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    """The function of a tool call: its name and arguments (a JSON string)."""

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """A tool call an assistant message made earlier in the conversation."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A message of the request."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[ToolCall]] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request that this server reads; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=1)
    tools: Optional[list[dict[str, Any]]] = None


def _error(status: int, message: str, kind: str, code: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def conversation(request: ChatCompletionRequest) -> tuple[list[dict[str, str]], Optional[str]]:
    """The request's messages as template messages plus the system prompt (leading system messages joined).

    OpenAI's assistant ``tool_calls`` become a ``function`` message (with the assistant's text, if any) and
    consecutive ``tool`` results one ``observation`` message that keeps each result apart (see
    :mod:`lit_factory.data.tool_messages`), the roles our templates render. An empty system message is a system
    prompt of its own (as ``apply_chat_template`` renders it); no system message means the template's default.
    """
    from lit_factory.data.tool_messages import function_content, observation_content

    system_parts = []
    messages = list(request.messages)
    while messages and messages[0].role == "system":
        system_parts.append(messages.pop(0).text())
    converted: list[dict[str, str]] = []
    results: list[str] = []
    for message in messages:
        if message.role == "tool":
            results.append(message.text())
            continue
        if results:
            converted.append({"role": "observation", "content": observation_content(results)})
            results = []
        if message.role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError:
                    raise LitFactoryError(f"messages: tool call {call.function.name!r} has arguments that are not "
                                          "JSON. Fix: send the arguments as a JSON string.") from None
                calls.append({"name": call.function.name, "arguments": arguments})
            converted.append({"role": "function", "content": function_content(calls, message.text())})
        else:
            converted.append({"role": message.role, "content": message.text()})
    if results:
        converted.append({"role": "observation", "content": observation_content(results)})
    return converted, ("\n".join(system_parts) if system_parts else None)


def create_app(
    engine: "ChatEngine", model_name: str, api_key: Optional[str] = None, max_request_bytes: int = 1 << 20
) -> "FastAPI":
    """The FastAPI application serving ``engine`` under ``model_name``.

    Args:
        engine: what generates replies (transformers ``ChatEngine`` or the vLLM engine).
        model_name: the id listed by ``/v1/models``; requests naming another model get 404.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
        max_request_bytes: larger request bodies are refused with 413 before they are read.
    """
    from fastapi import FastAPI, Request
    from sse_starlette import EventSourceResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    app = FastAPI(title="lit-factory", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        sent = request.headers.get("authorization", "")
        if api_key is not None and not secrets.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
            return _error(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                          "invalid_request_error", "invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            return _error(413, f"Request body over {max_request_bytes} bytes.", "invalid_request_error")
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lit-factory"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await request.body()
        if len(body) > max_request_bytes:  # chunked bodies carry no content-length for the middleware to check
            return _error(413, f"Request body over {max_request_bytes} bytes.", "invalid_request_error")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _error(400, f"Request body is not valid JSON: {err}", "invalid_request_error")
        try:
            completion = ChatCompletionRequest.model_validate(payload)
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            return _error(422, f"Invalid request: {details}", "invalid_request_error")
        if completion.model != model_name:
            return _error(404, f"Model {completion.model!r} is not served here; use {model_name!r}.",
                          "invalid_request_error", "model_not_found")
        tools = json.dumps(completion.tools, ensure_ascii=False) if completion.tools else ""
        try:
            messages, system = conversation(completion)
            engine.encode(messages, system, tools)  # template errors (wrong role order) are the client's: 400
        except LitFactoryError as err:
            return _error(400, str(err), "invalid_request_error")
        stop = (completion.stop,) if isinstance(completion.stop, str) else tuple(completion.stop or ())
        overrides = {
            "temperature": completion.temperature, "top_p": completion.top_p,
            "max_new_tokens": completion.max_completion_tokens or completion.max_tokens,
        }
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"

        def message_and_finish(text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
            calls = parse_tool_calls(engine.template, text) if tools else None
            if calls is None:
                return {"role": "assistant", "content": text}, finish_reason
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}
                          for call in calls]
            content = text_besides_tool_calls(engine.template, text) or None
            return {"role": "assistant", "content": content, "tool_calls": tool_calls}, "tool_calls"

        if not completion.stream:
            reply = await run_in_threadpool(engine.chat, messages, system, stop, tools, **overrides)
            message, finish_reason = message_and_finish(reply.text, reply.finish_reason)
            return {
                "id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
            }

        streamed = engine.stream(messages, system, stop, tools, **overrides)

        def chunk(delta: dict[str, Any], finish_reason: Optional[str] = None) -> str:
            return json.dumps({
                "id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            })

        async def events() -> Any:
            yield {"data": chunk({"role": "assistant", "content": ""})}
            if tools:  # a tool call is only recognisable once complete: send the reply as one delta
                text = "".join([piece async for piece in iterate_in_threadpool(iter(streamed))])
                message, finish_reason = message_and_finish(text, streamed.finish_reason)
                delta = {key: value for key, value in message.items() if key != "role"}
                for index, call in enumerate(delta.get("tool_calls") or []):
                    call["index"] = index  # stream deltas number their calls
                yield {"data": chunk(delta, finish_reason)}
            else:
                async for piece in iterate_in_threadpool(iter(streamed)):
                    yield {"data": chunk({"content": piece})}
                yield {"data": chunk({}, streamed.finish_reason)}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events())

    return app


def main(argv: list[str]) -> int:
    """Entry of ``lit-factory serve``."""
    from lit_factory.infer.options import generation_from, load_engine, model_args_from, model_parser

    parser = model_parser("lit-factory serve", "Serve a model over an OpenAI-compatible HTTP API.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (0.0.0.0 exposes it to the network).")
    parser.add_argument("--port", type=int, default=8000, help="TCP port.")
    parser.add_argument("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on every request.")
    parser.add_argument("--model-name", default=None, help="Model id clients send; defaults to --model.")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="Largest request body accepted.")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                        help="Generation backend; vllm needs the vllm package and a GPU.")
    options = parser.parse_args(argv)
    missing = [name for name in ("fastapi", "uvicorn", "sse_starlette") if importlib.util.find_spec(name) is None]
    if missing:
        raise LitFactoryError(f"serve needs {', '.join(missing)}. Fix: pip install -e \".[serve]\"")
    import uvicorn

    if options.backend == "vllm":
        from lit_factory.infer.vllm_engine import VLLMEngine

        engine: Any = VLLMEngine(model_args_from(options), options.template, generation_from(options))
    else:
        engine = load_engine(options)
    app = create_app(engine, options.model_name or options.model, options.api_key, options.max_request_bytes)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    return 0
