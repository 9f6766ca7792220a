"""Chat template formats: how a conversation becomes text, and which parts of that text carry the loss.

A template is a data file, ``templates/<name>.yaml`` at the top of the repository, read into a :class:`Template`.
Its formats are plain strings with three placeholders: ``{content}`` (the message), ``{bos}`` and ``{eos}`` (the
tokenizer's begin/end-of-sequence tokens, empty when the tokenizer has none). Everything else is literal text, so
special tokens are written as text (``<|im_end|>``) and the tokenizer turns them into their ids.

A conversation renders as::

    prefix  [system_format]  user_format  assistant_format  separator  user_format  assistant_format  separator ...
    \\_______________ prompt of turn 1 ___/ \\__ response __/ \\_ sep _/ \\_ prompt 2 _/ \\__ response __/ \\_ sep _/

Only ``assistant_format`` (the reply and its end-of-turn token) is loss-bearing. ``user_format`` ends with the
assistant header, so the same string followed by nothing is the generation prompt. ``separator`` is what the
reference template writes after an assistant's end-of-turn token (Qwen's ``\\n``): a model never has to produce it
because generation stops at the end-of-turn token, so it carries no loss.

The system prompt: ``None`` (a row without one) means the template's ``default_system``; any string, the empty
one included, is written as given, as ``apply_chat_template`` writes a system message (Qwen writes an empty system
block rather than its default). Families whose reference strips message text (``| trim``) list the roles in
``trim``; falcon's also rewrites blank lines (``content_replacements``).

Tool use: a ``function`` message (tool calls, with any text the assistant wrote before them; see
:mod:`lit_factory.data.tool_messages`) renders through ``function_format``: the text, then each call through
``tool_call_format``, newline-separated; it is loss-bearing as a whole. An ``observation`` message (the tool results
answering one assistant turn) renders each result through ``tool_result_format``, newline-separated, inside
``observation_format`` (which, like ``user_format``, ends with the assistant header). Tool definitions are appended
to the system prompt through ``tools_format``. Families whose system prompt lives inside the first user message
(Llama 2, Gemma) set ``system_in_user``.

Reasoning families (Qwen3, DeepSeek-R1, gpt-oss ...) set ``thought_words``: a reply may open with a thought, written
``open + thought + close`` before the answer (a reply whose text holds the close marker is read as thought, then
answer, as Qwen3's template reads it). As the official templates do, only the replies after the last user message
keep their thought (``keep_thoughts`` keeps every reply's); those replies always carry a thought block, the empty
one (``empty_thought``) when they have none, and it is loss-bearing. ``enable_thinking: false`` (a data option)
drops the thoughts and writes the empty block at the end of the prompt instead, so it carries no loss and the
generation prompt ends with it (Qwen3's ``enable_thinking=False``).

The registry of shipped templates is :mod:`lit_factory.data.templates`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lit_factory.data.tool_messages import read_function, read_observation
from lit_factory.errors import LitFactoryError

Message = dict[str, str]
USER_SIDE = ("user", "observation")
ASSISTANT_SIDE = ("assistant", "function")
# LLaMA-Factory-like tool description for families that have no format of their own.
DEFAULT_TOOLS_FORMAT = (
    "\n\nYou have access to the following tools. To call one, reply with a JSON object "
    '{"name": <tool name>, "arguments": <arguments object>}.\n{content}'
)


@dataclass(frozen=True)
class Template:
    """One chat format, read from ``templates/<name>.yaml`` (the YAML keys are these field names).

    Args:
        name: the registry name (the YAML file's stem).
        user_format: a user turn, ending with the assistant header; ``{content}`` is the user message.
        assistant_format: the loss-bearing reply: ``{content}`` plus the end-of-turn token.
        system_format: the system block written once before the first user turn (skipped when the system prompt
            is empty).
        separator: text after each assistant turn that carries no loss (e.g. Qwen's newline after ``<|im_end|>``).
        prefix: text at the very start of a conversation, typically ``{bos}``.
        default_system: the system prompt used when a conversation brings none.
        stop_words: strings that end a generated reply besides the tokenizer's eos.
        model_types: Hugging Face ``config.model_type`` values this template is the default for.
        observation_format: a tool-result turn (defaults to ``user_format``); ``{content}`` is its results.
        tool_result_format: one tool result inside ``observation_format`` (Qwen: a ``<tool_response>`` block).
        function_format: a tool-call reply, loss-bearing (defaults to ``assistant_format``).
        tool_call_format: one call inside ``function_format``; ``{content}`` is ``{"name": .., "arguments": ..}``.
        tools_format: appended to the system prompt when a conversation has tools; ``{content}`` is one JSON tool
            definition per line.
        system_tools_separator: written between a system prompt (an explicit one, even empty, or the default) and
            the tools; none without one (Qwen3 writes "\\n\\n" there and starts the block with the tools when no
            system message is given).
        system_in_user: the system block goes at the start of the first user message, inside ``user_format``
            (with ``trim``, the block and that message are stripped together, as the references do).
        trim: roles (``system``, ``user``, ``assistant``, ``observation``, ``function``) whose text is stripped of
            surrounding whitespace, where the reference template applies ``| trim``.
        content_replacements: ``[old, new]`` pairs applied in order to every message but the system prompt, before
            trimming (falcon's reference turns blank lines into single newlines).
        detect: strings that all appear in a tokenizer's chat template (or added tokens) when this is its family;
            ``auto`` tries templates with more markers first.
        thought_words: ``[open, close]`` around a reply's thought; set for reasoning families (Qwen3:
            ``["<think>\\n", "\\n</think>\\n\\n"]``).
        empty_thought: the thought block of a reply without a thought (default ``open + close``; GLM-4.7 writes only
            the close marker).
        keep_thoughts: keep the thoughts of replies before the last user message too (the official templates drop
            them: a model never sees its earlier thoughts in a conversation).
        enable_thinking: replies think (their thought blocks are loss-bearing); false drops thoughts and ends each
            prompt with ``empty_thought`` (no loss), as Qwen3's ``enable_thinking=False``. Set per run with the
            data option ``enable_thinking``.
        aliases: other registry names of this same format.
    """

    name: str
    user_format: str = "{content}"
    assistant_format: str = "{content}"
    system_format: str = "{content}"
    separator: str = ""
    prefix: str = ""
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    observation_format: str | None = None
    function_format: str | None = None
    tool_result_format: str = "{content}"
    tool_call_format: str = "{content}"
    tools_format: str = DEFAULT_TOOLS_FORMAT
    system_tools_separator: str = ""
    system_in_user: bool = False
    trim: tuple[str, ...] = ()
    content_replacements: tuple[tuple[str, str], ...] = ()
    detect: tuple[str, ...] = ()
    thought_words: tuple[str, ...] = ()
    empty_thought: str | None = None
    keep_thoughts: bool = False
    enable_thinking: bool = True
    aliases: tuple[str, ...] = ()

    def render_turns(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = "",
        tools: str = "",
    ) -> list[tuple[str, str, str]]:
        """Render a finished conversation as one ``(prompt, response, separator)`` text triple per exchange.

        ``messages`` alternate user-side/assistant-side and end with an assistant-side message; a leading
        ``system`` message is used as the system prompt when ``system`` is None. ``system=None`` means
        ``default_system``; ``""`` is an empty system prompt, written as such. The first prompt also holds the
        prefix and the system block. ``tools`` is a JSON list of tool definitions ("" for none).
        """
        messages, system = _split_system(messages, system)
        if len(messages) % 2 != 0:
            raise LitFactoryError(
                f"template {self.name!r}: a conversation to train on must end with an assistant message; got "
                f"{len(messages)} messages. Fix: give user/assistant pairs."
            )
        _check_alternation(messages, self.name)
        return self._turns(messages, system, bos_token, eos_token, tools, _last_user(messages))

    def _turns(self, messages: list[Message], system: str | None, bos_token: str, eos_token: str, tools: str,
               last_user: int) -> list[tuple[str, str, str]]:
        """The exchanges of ``messages``; replies after message ``last_user`` are the latest (they keep thoughts)."""
        turns = []
        for index in range(0, len(messages), 2):
            prompt = self._user(messages[index], index == 0, system, tools, bos_token, eos_token)
            to_prompt, response = self._assistant(messages[index + 1], bos_token, eos_token, index + 1 > last_user)
            separator = self._fill(self.separator, "", bos_token, eos_token)
            turns.append((prompt + to_prompt, response, separator))
        return turns

    def render(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = "",
        tools: str = "",
    ) -> list[tuple[str, bool]]:
        """Render a finished conversation as ``(text, is_loss_bearing)`` segments; only responses are loss-bearing."""
        segments = []
        for prompt, response, separator in self.render_turns(messages, system, bos_token, eos_token, tools):
            segments += [(prompt, False), (response, True)]
            if separator:
                segments.append((separator, False))
        return segments

    def render_prompt(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = "",
        tools: str = "",
    ) -> str:
        """Render a conversation that ends with a user message, up to the generation prompt (assistant header)."""
        messages, system = _split_system(messages, system)
        if len(messages) % 2 != 1:
            raise LitFactoryError(
                f"template {self.name!r}: a prompt for generation must end with a user message; got "
                f"{len(messages)} messages. Fix: drop the final assistant message."
            )
        _check_alternation(messages, self.name)
        turns = self._turns(messages[:-1], system, bos_token, eos_token, tools, _last_user(messages))
        history = "".join("".join(turn) for turn in turns)
        prompt = history + self._user(messages[-1], not history, system, tools, bos_token, eos_token)
        if self.thought_words and not self.enable_thinking:
            prompt += self._empty_thought
        return prompt

    def _user(self, message: Message, first: bool, system: str | None, tools: str, bos_token: str,
              eos_token: str) -> str:
        """A user-side turn; the ``first`` also carries the prefix and the system block."""
        fmt = self.user_format
        if message["role"] == "observation":
            fmt = self.observation_format if self.observation_format is not None else self.user_format
            content = "\n".join(self._fill(self.tool_result_format, self._text(result, "observation"), "", "")
                                 for result in read_observation(message["content"]))
        else:
            content = self._text(message["content"], message["role"])
        if not first:
            return self._fill(fmt, content, bos_token, eos_token)
        header = self._fill(self.prefix, "", bos_token, eos_token)
        written = system is not None  # an explicit system prompt, even "", gets its block (as the references do)
        system = self._text(self.default_system if system is None else system, "system", replace=False)
        if tools and (written or system):
            system += self.system_tools_separator
        system += self._tools(tools)
        block = self._fill(self.system_format, system, bos_token, eos_token) if system or written else ""
        if self.system_in_user:
            if message["role"] in self.trim:  # the references trim the block and the first message as one string
                content = (block + self._text(message["content"], "", replace=True)).strip()  # "": strip below
            else:
                content = block + content
            return header + self._fill(fmt, content, bos_token, eos_token)
        return header + block + self._fill(fmt, content, bos_token, eos_token)

    def _text(self, text: str, role: str, replace: bool = True) -> str:
        """A message's text as the reference writes it: replacements, then ``trim`` for the roles it lists."""
        if replace:
            for old, new in self.content_replacements:
                text = text.replace(old, new)
        return text.strip() if role in self.trim else text

    def _assistant(self, message: Message, bos_token: str, eos_token: str, latest: bool) -> tuple[str, str]:
        """A reply as (text that goes to the end of the prompt, loss-bearing response)."""
        if message["role"] == "function":
            fmt = self.function_format if self.function_format is not None else self.assistant_format
            return "", self._fill(fmt, self._tool_calls(message["content"]), bos_token, eos_token)
        if not self.thought_words:
            return "", self._fill(self.assistant_format, self._text(message["content"], "assistant"), bos_token,
                                  eos_token)
        thought, answer = self._split_thought(message["content"])
        answer = self._text(answer, "assistant")
        if not (latest or self.keep_thoughts):  # an earlier reply: the official templates drop its thought
            return "", self._fill(self.assistant_format, answer, bos_token, eos_token)
        # The block comes before the reply's format, as LLaMA-Factory writes it (the same text whether it ends the
        # prompt or opens the reply); after it the answer starts at once (Qwen3's template).
        reply = self._fill(self.assistant_format, answer.lstrip("\n"), bos_token, eos_token)
        if not self.enable_thinking:
            return self._empty_thought, reply
        opened, closed = self.thought_words
        return "", (opened + thought + closed if thought else self._empty_thought) + reply

    @property
    def _empty_thought(self) -> str:
        return self.empty_thought if self.empty_thought is not None else "".join(self.thought_words)

    def _split_thought(self, content: str) -> tuple[str, str]:
        """(thought, answer) of a reply, read as Qwen3's template reads it: text before the close marker (after any
        open marker) is the thought, newlines around it dropped; the answer loses its leading newlines."""
        opened, closed = (word.strip() for word in self.thought_words)
        if closed not in content:
            return "", content
        thought, answer = content.split(closed)[0], content.split(closed)[-1]
        return thought.split(opened)[-1].strip("\n"), answer.lstrip("\n")

    def _tool_calls(self, content: str) -> str:
        """A function message as this family writes it: the assistant's text, then one line per call (content that
        is not tool calls in JSON is kept as written)."""
        parsed = read_function(content)
        if parsed is None:
            return content
        text, calls = parsed
        # The key order and spacing of transformers' `tojson` (Qwen and friends write calls this way).
        texts = [json.dumps(call, ensure_ascii=False) for call in calls]
        written = [self._text(text, "function")] if text else []
        return "\n".join(written + [self._fill(self.tool_call_format, call, "", "") for call in texts])

    def _tools(self, tools: str) -> str:
        if not tools:
            return ""
        try:
            definitions = json.loads(tools)
        except json.JSONDecodeError:
            definitions = None
        if isinstance(definitions, list):
            if not definitions:
                return ""
            text = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in definitions)
        else:
            text = tools
        return self._fill(self.tools_format, text, "", "")

    @staticmethod
    def _fill(fmt: str, content: str, bos_token: str, eos_token: str) -> str:
        # Fill {bos}/{eos} in the format's own text only, then insert the content: a message that happens to
        # contain "{eos}" must stay as written.
        pieces = [p.replace("{bos}", bos_token).replace("{eos}", eos_token) for p in fmt.split("{content}")]
        return content.join(pieces)


def _last_user(messages: list[Message]) -> int:
    """Index of the last user message (tool results are not one): replies after it are the latest."""
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)


def _split_system(messages: list[Message], system: str | None) -> tuple[list[Message], str | None]:
    if messages and messages[0].get("role") == "system":
        return messages[1:], system if system is not None else messages[0]["content"]
    return messages, system


def _check_alternation(messages: list[Message], template_name: str) -> None:
    for index, message in enumerate(messages):
        expected = USER_SIDE if index % 2 == 0 else ASSISTANT_SIDE
        if message.get("role") not in expected:
            raise LitFactoryError(
                f"template {template_name!r}: message {index} has role {message.get('role')!r}, expected "
                f"{expected[0]!r}. Fix: messages must alternate user/assistant, starting with user."
            )
