"""Tool calls in generated text, read back through the template's own ``tool_call_format``.

A template writes one call as ``tool_call_format`` with ``{content}`` = ``{"name": ..., "arguments": {...}}`` (Qwen:
``<tool_call>\\n{content}\\n</tool_call>``); the reply of a model trained on it is parsed by finding that wrapper and
reading the JSON inside. A template whose wrapper is bare ``{content}`` counts a reply as calls only when the whole
reply is such JSON (one object or a list). Anything else is plain content; text a model writes before its calls
(templates train it to, e.g. Qwen's "Let me check.\\n<tool_call>...") is the reply's content.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional


def parse_tool_calls(template: Any, text: str) -> Optional[list[dict[str, str]]]:
    """``[{"name", "arguments" (a JSON string)}]`` when ``text`` is tool calls in ``template``'s format, else None."""
    call_format = getattr(template, "tool_call_format", None)
    if call_format is None:  # a template without a tool format (or the tokenizer's jinja template)
        return None
    prefix, _, suffix = call_format.partition("{content}")
    if prefix or suffix:
        chunks = re.findall(re.escape(prefix) + r"(.*?)" + re.escape(suffix), text, flags=re.DOTALL)
    else:
        chunks = [text]
    calls = []
    for chunk in chunks:
        try:
            parsed = json.loads(chunk.strip())
        except json.JSONDecodeError:
            return None
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
                return None
            arguments = call.get("arguments", {})
            calls.append({"name": call["name"],
                          "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                                               ensure_ascii=False)})
    return calls or None


def text_besides_tool_calls(template: Any, text: str) -> str:
    """The reply's text outside its tool-call wrappers (what the model said next to its calls), stripped."""
    prefix, _, suffix = (getattr(template, "tool_call_format", None) or "{content}").partition("{content}")
    if not (prefix or suffix):
        return ""  # the whole reply is the calls
    return re.sub(re.escape(prefix) + r".*?" + re.escape(suffix), "", text, flags=re.DOTALL).strip()
