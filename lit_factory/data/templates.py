"""Chat templates: how a conversation becomes text, and which parts of that text carry the loss.

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

``template: tokenizer`` uses the tokenizer's own jinja ``chat_template`` instead (see
:mod:`lit_factory.data.tokenizer_template`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lit_factory.data.tool_messages import read_function, read_observation
from lit_factory.errors import LitFactoryError
from lit_factory.shipped import shipped_dir

if TYPE_CHECKING:
    from lit_factory.data.tokenizer_template import TokenizerTemplate

log = logging.getLogger(__name__)

TEMPLATES_DIR = shipped_dir("templates")

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
        system_in_user: the system block goes at the start of the first user message, inside ``user_format``
            (with ``trim``, the block and that message are stripped together, as the references do).
        trim: roles (``system``, ``user``, ``assistant``, ``observation``, ``function``) whose text is stripped of
            surrounding whitespace, where the reference template applies ``| trim``.
        content_replacements: ``[old, new]`` pairs applied in order to every message but the system prompt, before
            trimming (falcon's reference turns blank lines into single newlines).
        detect: strings that all appear in a tokenizer's chat template (or added tokens) when this is its family;
            ``auto`` tries templates with more markers first.
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
    system_in_user: bool = False
    trim: tuple[str, ...] = ()
    content_replacements: tuple[tuple[str, str], ...] = ()
    detect: tuple[str, ...] = ()

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
        turns = []
        for index in range(0, len(messages), 2):
            prompt = self._user(messages[index], index == 0, system, tools, bos_token, eos_token)
            response = self._assistant(messages[index + 1], bos_token, eos_token)
            separator = self._fill(self.separator, "", bos_token, eos_token)
            turns.append((prompt, response, separator))
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
        history = "".join(
            "".join(turn) for turn in self.render_turns(messages[:-1], system, bos_token, eos_token, tools)
        )
        return history + self._user(messages[-1], not history, system, tools, bos_token, eos_token)

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

    def _assistant(self, message: Message, bos_token: str, eos_token: str) -> str:
        if message["role"] != "function":
            return self._fill(self.assistant_format, self._text(message["content"], "assistant"), bos_token,
                              eos_token)
        fmt = self.function_format if self.function_format is not None else self.assistant_format
        return self._fill(fmt, self._tool_calls(message["content"]), bos_token, eos_token)

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


AnyTemplate = Union[Template, "TokenizerTemplate"]


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


def available_templates() -> list[str]:
    """Names of the templates shipped in ``templates/``."""
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.yaml"))


def get_template(name: str, tokenizer: Any = None) -> AnyTemplate:
    """The template called ``name`` (a file in ``templates/``, or a path to a YAML file of the same schema).

    ``"auto"`` picks one from the tokenizer (see :func:`detect_template_name`); ``"tokenizer"`` uses the
    tokenizer's own jinja chat template.
    """
    if name == "tokenizer":
        chat_template = getattr(tokenizer, "chat_template", None)
        if not isinstance(chat_template, str) or not chat_template:
            raise LitFactoryError(
                "data.template='tokenizer': the tokenizer has no chat_template. Fix: name a template, e.g. 'auto'."
            )
        from lit_factory.data.tokenizer_template import TokenizerTemplate

        eos = getattr(tokenizer, "eos_token", None)
        return TokenizerTemplate(chat_template, stop_words=(eos,) if eos else ())
    if name == "auto":
        if tokenizer is None:
            raise LitFactoryError("template: 'auto' needs a tokenizer to look at. Fix: set data.template to a name.")
        name = detect_template_name(tokenizer)
        log.info("template 'auto' resolved to %r", name)
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = TEMPLATES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LitFactoryError(
            f"template: no template {name!r} (looked for {path}). Fix: use one of {available_templates()}, "
            "'tokenizer', 'auto' or a path to a template YAML file."
        )
    return _load_template(str(path.resolve()))


def _tokenizer_model_type(tokenizer: Any) -> str | None:
    """``model_type`` of the config.json next to the tokenizer's files, when there is one."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, OSError):
        return None


def detect_template_name(tokenizer: Any) -> str:
    """Guess the template from a tokenizer: the family whose ``detect`` markers all appear in its chat template or
    added tokens (most markers first), else the family listing the model's ``model_type``, else ``default``."""
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # some tokenizers keep several named templates
        chat_template = "\n".join(str(value) for value in chat_template.values())
    added_tokens = ""
    if hasattr(tokenizer, "get_added_vocab"):
        added_tokens = " ".join(tokenizer.get_added_vocab())
    haystack = f"{chat_template}\n{added_tokens}"
    templates = [get_template(name) for name in available_templates()]
    candidates = sorted((t for t in templates if t.detect), key=lambda t: (-len(t.detect), t.name))
    for template in candidates:
        if all(marker in haystack for marker in template.detect):
            return template.name
    model_type = _tokenizer_model_type(tokenizer)
    for template in templates:
        if model_type and model_type in template.model_types:
            return template.name
    return "default"


_FIELDS = {f.name for f in fields(Template)}


@lru_cache(maxsize=None)
def _load_template(path: str) -> Template:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise LitFactoryError(f"{path}: not valid YAML ({err}). Fix: check the file's syntax.") from None
    if not isinstance(raw, dict):
        raise LitFactoryError(f"{path}: a template file must be a mapping of fields. Fix: see templates/qwen.yaml.")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise LitFactoryError(f"{path}: unknown field(s) {unknown}. Fix: use only {sorted(_FIELDS - {'name'})}.")
    for key in ("user_format", "assistant_format", "system_format", "observation_format", "function_format",
                "tool_call_format", "tool_result_format", "tools_format"):
        if raw.get(key) is not None and "{content}" not in str(raw[key]):
            raise LitFactoryError(f"{path}: field {key!r} has no {{content}} placeholder. Fix: add it.")
    raw.setdefault("name", Path(path).stem)
    for key in ("stop_words", "model_types", "detect", "trim"):
        raw[key] = tuple(raw.get(key) or ())
    roles = {"system", "user", "assistant", "observation", "function"}
    if not set(raw["trim"]) <= roles:
        raise LitFactoryError(f"{path}: field 'trim' lists {sorted(set(raw['trim']) - roles)}. Fix: use roles of "
                              f"{sorted(roles)}.")
    pairs = raw.get("content_replacements") or []
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise LitFactoryError(f"{path}: field 'content_replacements' must be a list of [old, new] string pairs. "
                              "Fix: e.g. [[\"\\r\\n\", \"\\n\"]].")
    raw["content_replacements"] = tuple(tuple(pair) for pair in pairs)
    return Template(**raw)
