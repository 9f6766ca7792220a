"""``template: tokenizer``: a tokenizer's own jinja chat template, cut into the pieces a template gives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lit_factory.data.template_format import Message, _split_system
from lit_factory.data.tool_messages import read_function, read_observation
from lit_factory.errors import LitFactoryError


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own jinja ``chat_template`` (``template: tokenizer``), cut into the same (prompt, response,
    separator) pieces as a :class:`Template`.

    The pieces come from rendering growing prefixes of the conversation: the prompt of exchange k is what the
    generation prompt after message 2k adds, the response what message 2k+1 adds, minus trailing whitespace after
    the end-of-turn (the separator, no loss). This needs a template that renders a conversation as the
    concatenation of its prefixes, as chat templates do; one that does not is refused with an error.

    Args:
        chat_template: the jinja source.
        stop_words: the tokenizer's eos token (ends generation).
    """

    chat_template: str
    stop_words: tuple[str, ...] = ()
    name: str = "tokenizer"

    def _render(self, messages: list[dict], add_generation_prompt: bool, bos: str, eos: str, tools: Any) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos,
        )
        return rendered[0]

    def _openai(self, messages: list[Message], system: str | None) -> list[list[dict]]:
        """Our messages as OpenAI messages, grouped by turn: ``[[system]]`` (when there is one), then one group per
        message (an observation with several results is several ``tool`` messages)."""
        messages, system = _split_system(messages, system)
        groups: list[list[dict]] = [[{"role": "system", "content": system}]] if system is not None else []
        for message in messages:
            if message["role"] == "function":
                parsed = read_function(message["content"])
                if parsed is None:
                    raise LitFactoryError(
                        "template 'tokenizer': a function (tool call) message is not JSON: "
                        f"{message['content'][:60]!r}. Fix: write tool calls as {{\"name\": .., \"arguments\": ..}}."
                    )
                text, calls = parsed
                tool_calls = [{"type": "function", "function": call} for call in calls]
                groups.append([{"role": "assistant", "content": text, "tool_calls": tool_calls}])
            elif message["role"] == "observation":
                groups.append([{"role": "tool", "content": result} for result in read_observation(message["content"])])
            else:
                groups.append([dict(message)])
        return groups

    def render_turns(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = "",
        tools: str = "",
    ) -> list[tuple[str, str, str]]:
        """See :meth:`Template.render_turns`."""
        groups = self._openai(messages, system)
        offset = 1 if groups and groups[0][0]["role"] == "system" else 0
        tool_list = json.loads(tools) if tools else None
        turns, done = [], ""
        for end in range(offset + 1, len(groups) + 1, 2):
            with_prompt = self._render(_flat(groups[:end]), True, bos_token, eos_token, tool_list)
            full = self._render(_flat(groups[: end + 1]), False, bos_token, eos_token, tool_list)
            if not with_prompt.startswith(done) or not full.startswith(with_prompt):
                raise LitFactoryError(
                    "template 'tokenizer': the tokenizer's chat_template does not render a conversation as the "
                    "concatenation of its turns, so the loss mask cannot be cut from it. Fix: use a named template."
                )
            reply = full[len(with_prompt):]
            stripped = reply.rstrip()
            turns.append((with_prompt[len(done):], stripped, reply[len(stripped):]))
            done = full
        return turns

    def render(self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = "",
               tools: str = "") -> list[tuple[str, bool]]:
        """See :meth:`Template.render`."""
        segments = []
        for prompt, response, separator in self.render_turns(messages, system, bos_token, eos_token, tools):
            segments += [(prompt, False), (response, True)] + ([(separator, False)] if separator else [])
        return segments

    def render_prompt(self, messages: list[Message], system: str | None = None, bos_token: str = "",
                      eos_token: str = "", tools: str = "") -> str:
        """See :meth:`Template.render_prompt`."""
        return self._render(_flat(self._openai(messages, system)), True, bos_token, eos_token,
                            json.loads(tools) if tools else None)


def _flat(groups: list[list[dict]]) -> list[dict]:
    return [message for group in groups for message in group]
