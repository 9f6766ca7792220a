"""The OpenAI request bodies ``lit-factory serve`` reads (pydantic models), and what they mean for our engine.

Fields that change what is generated are either implemented or refused with 400 naming the field
(:func:`refused_field`); only fields with no effect on the reply (``user``, ``metadata`` ...) are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from lit_factory.errors import LitFactoryError

# Accepted and ignored: bookkeeping fields that do not change the reply.
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
                  "prompt_cache_key")
# Accepted when they hold the value that leaves the reply as it is (what the official client sends by default).
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "seed": (None,), "n": (None, 1), "best_of": (None, 1),
    "echo": (None, False), "suffix": (None, ""),
}


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


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the ``usage`` block (and ``choices: []``)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the reply must match (``strict`` is always the case here)."""

    name: str
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text`` (default), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class GenerationRequest(BaseModel):
    """Fields shared by chat and text completion requests. Unknown fields are kept (``extra``) so that
    :func:`refused_field` can name them."""

    model_config = ConfigDict(extra="allow")

    model: str
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None

    @property
    def stop_words(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None  # "auto" or "none"; others are refused (refused_field)
    response_format: Optional[ResponseFormat] = None

    def json_schema(self) -> Optional[dict[str, Any]]:
        """The schema the reply is constrained to, or None for free text."""
        if self.response_format is None or self.response_format.type == "text":
            return None
        if self.response_format.type == "json_object":
            return {"type": "object"}
        if self.response_format.json_schema is None or self.response_format.json_schema.schema_ is None:
            raise LitFactoryError("response_format: type json_schema needs json_schema.schema. Fix: send "
                                  "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}.")
        return self.response_format.json_schema.schema_

    def offered_tools(self) -> str:
        """The tool definitions as JSON for the template ('' when none, or ``tool_choice`` is ``none``)."""
        if not self.tools or self.tool_choice == "none":
            return ""
        return json.dumps(self.tools, ensure_ascii=False)


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions`` (legacy text completion: the prompt is continued as raw text, no chat template).
    ``max_tokens`` defaults to 16, as OpenAI's does."""

    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(16, ge=1)
    echo: bool = False

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise LitFactoryError(f"prompt: {len(self.prompt)} prompts in one request; this server completes one. "
                                  "Fix: send one request per prompt.")
        return self.prompt[0]


def refused_field(request: GenerationRequest) -> Optional[str]:
    """The first field of ``request`` this server would have to ignore although it changes the reply, or None."""
    if getattr(request, "tool_choice", None) not in (None, "auto", "none"):  # forcing a call is not implemented
        return "tool_choice"
    for name, value in (request.model_extra or {}).items():
        if name in IGNORED_FIELDS:
            continue
        if name in NEUTRAL_VALUES and any(value == neutral and type(value) is type(neutral) or value is neutral
                                          for neutral in NEUTRAL_VALUES[name]):
            continue
        return name
    return None


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


