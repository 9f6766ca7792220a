"""How tool turns are written inside the standard row's ``{"role", "content"}`` messages (one home for the encoding).

A standard row keeps every message a pair of strings, so the two tool roles carry structure as JSON text:

* ``function`` (the assistant's tool calls): a call ``{"name", "arguments"}`` or a list of calls, as LLaMA-Factory
  writes them; when the assistant also wrote text before its calls (OpenAI ``content`` next to ``tool_calls``), the
  envelope ``{"content": <text>, "tool_calls": [<calls>]}``.
* ``observation`` (tool results answering one assistant turn): the result text itself; several consecutive results
  (OpenAI ``tool`` messages in a row) as the envelope ``{"tool_results": [<text>, ...]}``, so a template that writes
  each result in its own block (Qwen's ``<tool_response>``) can do so. A single result that happens to look like
  that envelope is wrapped in one, so reading back is never ambiguous.
"""

from __future__ import annotations

import json
from typing import Any

RESULTS_KEY = "tool_results"


def function_content(calls: list[dict[str, Any]], text: str = "") -> str:
    """A function message's content for ``calls`` (``{"name", "arguments"}`` each) and the text written before them."""
    if text:
        return json.dumps({"content": text, "tool_calls": calls}, ensure_ascii=False)
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def read_function(content: str) -> tuple[str, list[dict[str, Any]]] | None:
    """``(text, calls)`` of a function message, or None when its content is not tool calls in JSON."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return None
    text = ""
    if isinstance(value, dict) and "tool_calls" in value and "name" not in value:
        text, value = value.get("content") or "", value["tool_calls"]
    calls = value if isinstance(value, list) else [value]
    if not isinstance(text, str) or not calls or not all(isinstance(c, dict) and "name" in c for c in calls):
        return None
    return text, [{"name": call["name"], "arguments": call.get("arguments", {})} for call in calls]


def observation_content(results: list[str]) -> str:
    """An observation message's content for one or more consecutive tool results."""
    if len(results) == 1 and read_observation(results[0]) == results:
        return results[0]
    return json.dumps({RESULTS_KEY: results}, ensure_ascii=False)


def read_observation(content: str) -> list[str]:
    """The tool results an observation message holds (usually one: its content)."""
    if content.startswith("{") and RESULTS_KEY in content:
        try:
            value = json.loads(content)
        except json.JSONDecodeError:
            return [content]
        if (isinstance(value, dict) and list(value) == [RESULTS_KEY] and isinstance(value[RESULTS_KEY], list)
                and value[RESULTS_KEY] and all(isinstance(result, str) for result in value[RESULTS_KEY])):
            return value[RESULTS_KEY]
    return [content]
