"""The chat template registry: ``templates/<name>.yaml`` files at the top of the repository, read into
:class:`~lit_factory.data.template_format.Template` (the format and how it renders: see that module).

A file may ``extends: <other>`` to take every field of another template but ``detect``, ``model_types`` and
``aliases`` (which identify a family) and change a few (LLaMA-Factory's families that differ only in their default
system prompt). ``aliases`` lists other names of the same format (LLaMA-Factory's names for the text part of its
multimodal models), so a recipe's ``template: qwen2_vl`` finds ``qwen2_vl.yaml`` or the file that lists it.

``template: tokenizer`` uses the tokenizer's own jinja ``chat_template`` instead (see
:mod:`lit_factory.data.tokenizer_template`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lit_factory.data.template_format import Message, Template
from lit_factory.errors import LitFactoryError
from lit_factory.shipped import shipped_dir

if TYPE_CHECKING:
    from lit_factory.data.tokenizer_template import TokenizerTemplate

__all__ = ["AnyTemplate", "Message", "Template", "TEMPLATES_DIR", "available_templates", "detect_template_name",
           "get_template"]

log = logging.getLogger(__name__)

TEMPLATES_DIR = shipped_dir("templates")

AnyTemplate = Union[Template, "TokenizerTemplate"]


def available_templates() -> list[str]:
    """Names of the templates shipped in ``templates/``, their aliases included."""
    return sorted({path.stem for path in TEMPLATES_DIR.glob("*.yaml")} | set(_aliases()))


@lru_cache(maxsize=None)
def _aliases() -> dict[str, str]:
    """alias -> the shipped file that lists it under ``aliases``."""
    found: dict[str, str] = {}
    for path in sorted(TEMPLATES_DIR.glob("*.yaml")):
        for alias in _read_raw(str(path)).get("aliases") or ():
            if alias in found or (TEMPLATES_DIR / f"{alias}.yaml").is_file():
                raise LitFactoryError(f"{path}: alias {alias!r} is already a template name. Fix: remove it.")
            found[alias] = path.stem
    return found


def get_template(name: str, tokenizer: Any = None, enable_thinking: bool | None = None) -> AnyTemplate:
    """The template called ``name`` (a file in ``templates/``, an alias listed in one, or a path to a YAML file of
    the same schema).

    ``"auto"`` picks one from the tokenizer (see :func:`detect_template_name`); ``"tokenizer"`` uses the
    tokenizer's own jinja chat template. ``enable_thinking`` (None: the file's own) switches a reasoning
    template's thoughts on or off; other templates ignore it, as LLaMA-Factory does.
    """
    template = _get_template(name, tokenizer)
    if enable_thinking is not None and isinstance(template, Template) and template.thought_words:
        template = replace(template, enable_thinking=bool(enable_thinking))
    return template


def _get_template(name: str, tokenizer: Any) -> AnyTemplate:
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
        path = TEMPLATES_DIR / f"{_aliases().get(name, name)}.yaml"
    if not path.is_file():
        raise LitFactoryError(
            f"template: no template {name!r} (looked for {path}). Fix: use a shipped name (closest: "
            f"{', '.join(_closest(name)) or 'none'}; all {len(available_templates())} are listed in "
            "docs/templates.md), 'tokenizer', 'auto' or a path to a template YAML file."
        )
    return _load_template(str(path.resolve()))


def _closest(name: str) -> list[str]:
    """Shipped names that look like ``name`` (the full list of 130-odd names would not fit an error line)."""
    import difflib

    return difflib.get_close_matches(name, available_templates(), n=5, cutoff=0.5)


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
    """Guess the template from a tokenizer: the family listing the model's ``model_type`` (config.json next to the
    tokenizer) when its ``detect`` markers, if it has any, all appear in the tokenizer's chat template or added
    tokens (several families share markers: Qwen3 and Qwen2.5); else the family whose markers all appear (most
    markers first); else the family listing the ``model_type``; else ``default``."""
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # some tokenizers keep several named templates
        chat_template = "\n".join(str(value) for value in chat_template.values())
    added_tokens = ""
    if hasattr(tokenizer, "get_added_vocab"):
        added_tokens = " ".join(tokenizer.get_added_vocab())
    haystack = f"{chat_template}\n{added_tokens}"
    templates = [_load_template(str(path.resolve())) for path in sorted(TEMPLATES_DIR.glob("*.yaml"))]
    model_type = _tokenizer_model_type(tokenizer)
    typed = [t for t in templates if model_type and model_type in t.model_types]
    for template in typed:
        if all(marker in haystack for marker in template.detect):
            return template.name
    candidates = sorted((t for t in templates if t.detect), key=lambda t: (-len(t.detect), t.name))
    for template in candidates:
        if all(marker in haystack for marker in template.detect):
            return template.name
    return typed[0].name if typed else "default"


_FIELDS = {f.name for f in fields(Template)} | {"extends"}
_IDENTITY = ("detect", "model_types", "aliases")  # what `extends` does not inherit


@lru_cache(maxsize=None)
def _read_raw(path: str) -> dict:
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
    return raw


def _resolve_extends(path: str, seen: tuple[str, ...] = ()) -> dict:
    """The file's fields over those of the template it ``extends`` (identity fields not inherited)."""
    raw = dict(_read_raw(path))
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = TEMPLATES_DIR / f"{_aliases().get(base_name, base_name)}.yaml"
    if not base_path.is_file():
        raise LitFactoryError(f"{path}: extends {base_name!r}, which is not a shipped template. Fix: name one of "
                              "templates/.")
    if str(base_path.resolve()) in seen:
        raise LitFactoryError(f"{path}: extends {base_name!r}, which extends it back. Fix: break the cycle.")
    base = _resolve_extends(str(base_path.resolve()), (*seen, path))
    return {**{k: v for k, v in base.items() if k not in _IDENTITY and k != "name"}, **raw}


@lru_cache(maxsize=None)
def _load_template(path: str) -> Template:
    raw = _resolve_extends(path)
    for key in ("user_format", "assistant_format", "system_format", "observation_format", "function_format",
                "tool_call_format", "tool_result_format", "tools_format"):
        if raw.get(key) is not None and "{content}" not in str(raw[key]):
            raise LitFactoryError(f"{path}: field {key!r} has no {{content}} placeholder. Fix: add it.")
    raw.setdefault("name", Path(path).stem)
    for key in ("stop_words", "model_types", "detect", "trim", "thought_words", "aliases"):
        raw[key] = tuple(raw.get(key) or ())
    if raw["thought_words"] and len(raw["thought_words"]) != 2:
        raise LitFactoryError(f"{path}: field 'thought_words' must be [open, close]. Fix: e.g. "
                              "[\"<think>\\n\", \"\\n</think>\\n\\n\"].")
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
