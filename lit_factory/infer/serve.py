"""``lit-factory serve``: an OpenAI-compatible HTTP API over a chat engine (FastAPI + uvicorn, SSE streaming).

    lit-factory serve --model Qwen/Qwen2.5-0.5B-Instruct --adapter runs/sft-lora/version_0 --api-key SECRET

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (legacy text
completion: the prompt continued as raw text, no chat template; ``max_tokens`` defaults to 16 as OpenAI's; ``echo``
supported). ``stream: true`` answers with server-sent events ending with ``data: [DONE]``; with
``stream_options: {"include_usage": true}`` the last chunk before it carries the ``usage`` block and no choices, as
OpenAI sends it. So the official ``openai`` client works with ``base_url="http://127.0.0.1:8000/v1"``.
``response_format`` ``json_object`` or ``json_schema`` constrains decoding (lm-format-enforcer, see
``infer.json_mode``): a reply that ends by itself is JSON matching the schema; one cut by ``max_tokens`` (finish
reason ``length``) may be incomplete. With ``tools`` in the request, the definitions go into the prompt through the
template's tool format and a reply written in the template's tool-call format comes back as ``tool_calls`` (finish
reason ``tool_calls``); streamed, such a reply arrives as one delta once complete (``tool_choice`` ``none`` offers no
tools). Conversation history may carry assistant ``tool_calls`` and ``tool`` results, rendered as the template's
function and observation turns.
Bad requests get OpenAI-shaped error bodies: 400 (not JSON, JSON nested too deep, a conversation the template cannot
render, a prompt longer than the model's context: code ``context_length_exceeded``, or a field this server does not
implement and that would change the reply, e.g. ``logprobs``, ``seed``, ``n`` > 1: code ``unsupported_field``,
``param`` naming it), 401 (missing/wrong API key), 404 (other model name), 413 (body over ``--max-request-bytes``,
counted while reading, so chunked bodies too), 422 (fields of the wrong type or out of range), 503
(``--max-queued-requests`` requests already in progress); the server keeps serving. ``max_tokens`` is capped to what
fits in the context after the prompt. Requests in progress take turns at every generated token
(``infer.scheduling``), so a short request is not held behind a long one. Needs the ``serve`` extra:
``pip install -e ".[serve]"``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (Request) at run time.
import importlib.util
import ipaddress
import json
import secrets
import socket
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from lit_factory.errors import LitFactoryError
from lit_factory.infer.openai_api import (ChatCompletionRequest, CompletionRequest, GenerationRequest, conversation,
                                          refused_field)
from lit_factory.infer.tool_calls import parse_tool_calls, text_besides_tool_calls

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lit_factory.infer.engine import ChatEngine


def _error(status: int, message: str, kind: str, code: Optional[str] = None, param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def context_length(engine: Any) -> Optional[int]:
    """How many positions the served model takes (prompt + reply), or None when the engine cannot tell."""
    if getattr(engine, "context_length", None):
        return int(engine.context_length)
    config = getattr(getattr(engine, "model", None), "config", None)
    length = getattr(config, "max_position_embeddings", None)
    return int(length) if isinstance(length, int) else None


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (a chunked body has no length to check first,
    and starlette's ``request.body()`` would read it whole)."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _BodyTooLarge
        parts.append(part)
    return b"".join(parts)


def create_app(
    engine: "ChatEngine", model_name: str, api_key: Optional[str] = None, max_request_bytes: int = 1 << 20,
    max_queued_requests: int = 16,
) -> "FastAPI":
    """The FastAPI application serving ``engine`` under ``model_name``.

    Args:
        engine: what generates replies (transformers ``ChatEngine`` or the vLLM engine).
        model_name: the id listed by ``/v1/models``; requests naming another model get 404.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
        max_request_bytes: larger request bodies are refused with 413 before they are read whole.
        max_queued_requests: completions in progress at once (they take turns token by token); more get 503, so
            a burst cannot make every reply slow without bound.
    """
    from fastapi import FastAPI, Request
    from sse_starlette import EventSourceResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    app = FastAPI(title="lit-factory", docs_url=None, redoc_url=None)
    created = int(time.time())
    positions = context_length(engine)
    admitted = [0]  # completions admitted and not yet finished (the event loop is one thread: no lock needed)

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

    async def admit(request: Request, kind: type[GenerationRequest], answer: Any) -> Any:
        """Hold a queue slot while ``answer`` runs on the parsed request (a stream: until its last event)."""
        if admitted[0] >= max_queued_requests:
            return _error(503, f"Server busy: {max_queued_requests} requests are already in progress; retry "
                          "later.", "server_error", "server_busy")
        admitted[0] += 1
        try:
            parsed = await _parse(request, kind)
            response = parsed if not isinstance(parsed, GenerationRequest) else await answer(parsed)
        except BaseException:
            admitted[0] -= 1
            raise
        if hasattr(response, "body_iterator"):
            response.background = _Release(admitted, getattr(response, "background", None))
        else:
            admitted[0] -= 1
        return response

    async def _parse(request: Request, kind: type[GenerationRequest]) -> Any:
        """The validated request, or the error response to send."""
        try:
            body = await _read_body(request, max_request_bytes)
        except _BodyTooLarge:
            return _error(413, f"Request body over {max_request_bytes} bytes.", "invalid_request_error")
        try:
            parsed = kind.model_validate(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _error(400, f"Request body is not valid JSON: {err}", "invalid_request_error")
        except RecursionError:
            return _error(400, "Request body is JSON nested too deeply.", "invalid_request_error")
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            return _error(422, f"Invalid request: {details}", "invalid_request_error")
        if parsed.model != model_name:
            return _error(404, f"Model {parsed.model!r} is not served here; use {model_name!r}.",
                          "invalid_request_error", "model_not_found")
        refused = refused_field(parsed)
        if refused is not None:
            return _error(400, f"{refused}: not supported by this server, and ignoring it would change the reply. "
                          f"Fix: leave {refused} out of the request.", "invalid_request_error", "unsupported_field",
                          refused)
        return parsed

    def budget(prompt_tokens: int, requested: Optional[int]) -> Any:
        """The max_new_tokens for this request (capped to the context), or the 400 to send."""
        max_new_tokens = requested or engine.generation.max_new_tokens
        if positions is not None:
            if prompt_tokens >= positions:
                return _error(400, f"This model's context is {positions} tokens; the prompt has {prompt_tokens}. "
                              "Shorten the prompt.", "invalid_request_error", "context_length_exceeded")
            max_new_tokens = min(max_new_tokens, positions - prompt_tokens)
        return max_new_tokens

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await admit(request, ChatCompletionRequest, _chat_completion)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await admit(request, CompletionRequest, _text_completion)

    async def _chat_completion(completion: ChatCompletionRequest) -> Any:
        try:
            tools = completion.offered_tools()
            schema = completion.json_schema()
            messages, system = conversation(completion)
            prompt_tokens = len(engine.encode(messages, system, tools))  # template errors are the client's: 400
        except LitFactoryError as err:
            return _error(400, str(err), "invalid_request_error")
        max_new_tokens = budget(prompt_tokens, completion.max_completion_tokens or completion.max_tokens)
        if not isinstance(max_new_tokens, int):
            return max_new_tokens
        overrides = {"temperature": completion.temperature, "top_p": completion.top_p,
                     "max_new_tokens": max_new_tokens, "json_schema": schema}
        stop = completion.stop_words
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"

        def message_and_finish(text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
            calls = parse_tool_calls(engine.template, text) if tools else None
            if calls is None:
                return {"role": "assistant", "content": text}, finish_reason
            tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}
                          for call in calls]
            content = text_besides_tool_calls(engine.template, text) or None
            return {"role": "assistant", "content": content, "tool_calls": tool_calls}, "tool_calls"

        try:
            if not completion.stream:
                reply = await run_in_threadpool(engine.chat, messages, system, stop, tools, **overrides)
                message, finish_reason = message_and_finish(reply.text, reply.finish_reason)
                return {
                    "id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                    "usage": usage(reply.prompt_tokens, reply.completion_tokens),
                }
            streamed = engine.stream(messages, system, stop, tools, **overrides)
        except LitFactoryError as err:  # e.g. a JSON schema the constraint library cannot enforce
            return _error(400, str(err), "invalid_request_error")

        def chunk(delta: Optional[dict[str, Any]], finish_reason: Optional[str] = None,
                  counts: Optional[dict[str, int]] = None) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            body = {"id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model_name, "choices": choices}
            if completion.include_usage:  # null on every chunk but the last, as OpenAI sends it
                body["usage"] = counts
            return json.dumps(body)

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
            if completion.include_usage:
                yield {"data": chunk(None, counts=usage(streamed.prompt_tokens, streamed.completion_tokens))}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events())

    async def _text_completion(completion: CompletionRequest) -> Any:
        try:
            prompt = completion.prompt_text()
        except LitFactoryError as err:
            return _error(400, str(err), "invalid_request_error", param="prompt")
        prompt_ids = engine.encode_text(prompt)
        max_new_tokens = budget(len(prompt_ids), completion.max_tokens)
        if not isinstance(max_new_tokens, int):
            return max_new_tokens
        overrides = {"temperature": completion.temperature, "top_p": completion.top_p,
                     "max_new_tokens": max_new_tokens}
        echoed = prompt if completion.echo else ""
        reply_id = f"cmpl-{uuid.uuid4().hex}"

        def body(choices: list[dict[str, Any]], counts: Optional[dict[str, int]]) -> dict[str, Any]:
            return {"id": reply_id, "object": "text_completion", "created": int(time.time()), "model": model_name,
                    "choices": choices, "usage": counts}

        def choice(text: str, finish_reason: Optional[str]) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

        if not completion.stream:
            reply = await run_in_threadpool(engine.complete_ids, prompt_ids, completion.stop_words, **overrides)
            return body([choice(echoed + reply.text, reply.finish_reason)],
                        usage(reply.prompt_tokens, reply.completion_tokens))
        streamed = engine.stream_ids(prompt_ids, completion.stop_words, **overrides)

        async def events() -> Any:
            if echoed:
                yield {"data": json.dumps(body([choice(echoed, None)], None))}
            async for piece in iterate_in_threadpool(iter(streamed)):
                yield {"data": json.dumps(body([choice(piece, None)], None))}
            yield {"data": json.dumps(body([choice("", streamed.finish_reason)], None))}
            if completion.include_usage:
                yield {"data": json.dumps(body([], usage(streamed.prompt_tokens, streamed.completion_tokens)))}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events())

    return app


class _Release:
    """Background task of a streamed response: frees its queue slot once the stream has been sent (or dropped)."""

    def __init__(self, admitted: list[int], then: Any) -> None:
        self.admitted, self.then = admitted, then

    async def __call__(self) -> None:
        self.admitted[0] -= 1
        if self.then is not None:
            await self.then()


def check_port_free(host: str, port: int) -> None:
    """Fail in one line before the model loads when ``host:port`` cannot be bound (uvicorn would print six)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LitFactoryError(f"--host/--port: cannot listen on {host}:{port} ({err.strerror}). Fix: choose "
                                  "another --port, or stop the program using it.") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def main(argv: list[str]) -> int:
    """Entry of ``lit-factory serve``."""
    from lit_factory.infer.options import generation_from, load_engine, model_args_from, model_parser

    parser = model_parser("lit-factory serve", "Serve a model over an OpenAI-compatible HTTP API.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (0.0.0.0 exposes it to the network).")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (1-65535).")
    parser.add_argument("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on every request.")
    parser.add_argument("--model-name", default=None, help="Model id clients send; defaults to --model.")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="Largest request body accepted.")
    parser.add_argument("--max-queued-requests", type=int, default=16,
                        help="Completions in progress at once (they take turns token by token); more are answered "
                        "503 (server busy).")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm"],
                        help="Generation backend; vllm needs the vllm package and a GPU.")
    options = parser.parse_args(argv)
    missing = [name for name in ("fastapi", "uvicorn", "sse_starlette") if importlib.util.find_spec(name) is None]
    if missing:
        raise LitFactoryError(f"serve needs {', '.join(missing)}. Fix: pip install -e \".[serve]\"")
    if not 1 <= options.port <= 65535:
        raise LitFactoryError(f"--port {options.port}: not a TCP port. Fix: give a port from 1 to 65535, e.g. 8000.")
    if options.max_request_bytes < 1 or options.max_queued_requests < 1:
        raise LitFactoryError("--max-request-bytes and --max-queued-requests must be at least 1. Fix: raise them.")
    check_port_free(options.host, options.port)
    if options.api_key is None and not is_loopback(options.host):
        print(f"lit-factory serve: warning: listening on {options.host} without --api-key: anyone who can reach "
              "this address can use the model. Fix: pass --api-key KEY, or bind 127.0.0.1.", file=sys.stderr)
    import uvicorn

    if options.backend == "vllm":
        from lit_factory.infer.vllm_engine import VLLMEngine

        engine: Any = VLLMEngine(model_args_from(options), options.template, generation_from(options))
    else:
        engine = load_engine(options)
    app = create_app(engine, options.model_name or options.model, options.api_key, options.max_request_bytes,
                     options.max_queued_requests)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    return 0
