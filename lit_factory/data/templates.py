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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from lit_factory.errors import LitFactoryError

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"

Message = dict[str, str]


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

    def render_turns(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = ""
    ) -> list[tuple[str, str, str]]:
        """Render a finished conversation as one ``(prompt, response, separator)`` text triple per exchange.

        ``messages`` alternate user/assistant and end with an assistant message; a leading ``system`` message is
        used as the system prompt when ``system`` is not given. An empty system prompt falls back to
        ``default_system`` (as LLaMA-Factory does). The first prompt also holds the prefix and the system block.
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
            prompt = self._fill(self.user_format, messages[index]["content"], bos_token, eos_token)
            if index == 0:
                prompt = self._header(system, bos_token, eos_token) + prompt
            response = self._fill(self.assistant_format, messages[index + 1]["content"], bos_token, eos_token)
            separator = self._fill(self.separator, "", bos_token, eos_token)
            turns.append((prompt, response, separator))
        return turns

    def render(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = ""
    ) -> list[tuple[str, bool]]:
        """Render a finished conversation as ``(text, is_loss_bearing)`` segments; only responses are loss-bearing."""
        segments = []
        for prompt, response, separator in self.render_turns(messages, system, bos_token, eos_token):
            segments += [(prompt, False), (response, True)]
            if separator:
                segments.append((separator, False))
        return segments

    def render_prompt(
        self, messages: list[Message], system: str | None = None, bos_token: str = "", eos_token: str = ""
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
            "".join(turn) for turn in self.render_turns(messages[:-1], system, bos_token, eos_token)
        )
        last_user = self._fill(self.user_format, messages[-1]["content"], bos_token, eos_token)
        if not history:
            last_user = self._header(system, bos_token, eos_token) + last_user
        return history + last_user

    def _header(self, system: str | None, bos_token: str, eos_token: str) -> str:
        system = system or self.default_system
        header = self._fill(self.prefix, "", bos_token, eos_token)
        if system:
            header += self._fill(self.system_format, system, bos_token, eos_token)
        return header

    @staticmethod
    def _fill(fmt: str, content: str, bos_token: str, eos_token: str) -> str:
        # Fill {bos}/{eos} in the format's own text only, then insert the content: a message that happens to
        # contain "{eos}" must stay as written.
        pieces = [p.replace("{bos}", bos_token).replace("{eos}", eos_token) for p in fmt.split("{content}")]
        return content.join(pieces)


def _split_system(messages: list[Message], system: str | None) -> tuple[list[Message], str | None]:
    if messages and messages[0].get("role") == "system":
        return messages[1:], system if system is not None else messages[0]["content"]
    return messages, system


def _check_alternation(messages: list[Message], template_name: str) -> None:
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise LitFactoryError(
                f"template {template_name!r}: message {index} has role {message.get('role')!r}, expected "
                f"{expected!r}. Fix: messages must alternate user/assistant, starting with user."
            )


def available_templates() -> list[str]:
    """Names of the templates shipped in ``templates/``."""
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.yaml"))


def get_template(name: str, tokenizer: Any = None) -> Template:
    """The template called ``name`` (a file in ``templates/``, or a path to a YAML file of the same schema).

    ``"auto"`` picks one from the tokenizer's chat template and special tokens (see :func:`detect_template_name`).
    """
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
            f"template: no template {name!r} (looked for {path}). Fix: use one of {available_templates()} "
            "or a path to a template YAML file."
        )
    return _load_template(str(path.resolve()))


def detect_template_name(tokenizer: Any) -> str:
    """Guess the template from a tokenizer: ChatML markers mean ``qwen`` (when the chat template carries Qwen's
    default system prompt) or ``chatml``; Llama-3 header tokens mean ``llama3``; anything else ``default``."""
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # some tokenizers keep several named templates
        chat_template = "\n".join(str(value) for value in chat_template.values())
    added_tokens = ""
    if hasattr(tokenizer, "get_added_vocab"):
        added_tokens = " ".join(tokenizer.get_added_vocab())
    haystack = f"{chat_template}\n{added_tokens}"
    if "<|im_start|>" in haystack:
        return "qwen" if "You are Qwen" in chat_template else "chatml"
    if "<|start_header_id|>" in haystack:
        return "llama3"
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
    for key in ("user_format", "assistant_format", "system_format"):
        if key in raw and "{content}" not in str(raw[key]):
            raise LitFactoryError(f"{path}: field {key!r} has no {{content}} placeholder. Fix: add it.")
    raw.setdefault("name", Path(path).stem)
    for key in ("stop_words", "model_types"):
        raw[key] = tuple(raw.get(key) or ())
    return Template(**raw)
