"""Constrained decoding to JSON (``response_format`` of ``lit-factory serve``), with lm-format-enforcer.

At each step only tokens that keep the reply a prefix of a JSON text matching the schema are allowed (a
``prefix_allowed_tokens_fn`` for ``model.generate``), and the end-of-reply tokens only once the JSON is complete; so a
reply that ends by itself (finish reason ``stop``) is valid JSON. A reply cut by ``max_tokens`` (finish reason
``length``) can be incomplete JSON, as with OpenAI. ``{"type": "object"}`` is OpenAI's ``json_object`` mode.

lm-format-enforcer's own transformers integration does not import under transformers 5 (it imports modules that
moved), so the vocabulary table it needs is built here from the tokenizer, as that integration does.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional

from lit_factory.errors import LitFactoryError

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
# tokenizer -> {eos ids: table}; weak, so a dropped engine's tokenizer takes its table with it.
_tables: "weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], Any]]" = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def _usable_in_json(text: str) -> bool:
    # Raw control characters are invalid inside JSON strings, but lm-format-enforcer's free-text shortcut admits
    # tokens holding them unless they also hold a quote, backslash or newline (which it checks): leave them out.
    # Newlines and carriage returns stay: the shortcut rejects them inside strings, and outside they are whitespace.
    # A byte token that is part of a UTF-8 character decodes to U+FFFD alone; the enforcer reads the decoded reply,
    # which then differs from the tokens' texts and loses its place (a string it takes for closed): leave them out
    # too, so characters that only byte tokens spell cannot be written raw (a model may still escape them: \uXXXX).
    return "\ufffd" not in text and not any(ord(char) < 0x20 and char not in "\n\r" for char in text)


def _vocabulary_table(tokenizer: Any, eos_ids: list[int]) -> Any:
    """lm-format-enforcer's ``TokenEnforcerTokenizerData`` for ``tokenizer`` (built once per tokenizer: a pass
    over the vocabulary, seconds for a 150k-token one)."""
    from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData

    key = tuple(eos_ids)
    with _tables_lock:
        known = _tables.setdefault(tokenizer, {})
        if key in known:
            return known[key]
        special = set(tokenizer.all_special_ids)
        # Decoding after "0" keeps a word-start token's leading space that decoding it alone drops.
        zero = tokenizer.encode("0", add_special_tokens=False)[-1]
        regular = []
        for token in range(len(tokenizer)):
            if token in special:
                continue
            after_zero = tokenizer.decode([zero, token])[1:]
            if _usable_in_json(after_zero):
                regular.append((token, after_zero, len(after_zero) > len(tokenizer.decode([token]))))

        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids).rstrip("\ufffd")  # an unfinished multi-byte character is not text yet

        known[key] = TokenEnforcerTokenizerData(regular, decode, list(eos_ids), False, len(tokenizer))
        return known[key]


def json_constraint(tokenizer: Any, eos_ids: list[int], schema: Optional[dict[str, Any]]) -> Callable[[int, Any],
                                                                                                        list[int]]:
    """A ``prefix_allowed_tokens_fn`` that keeps the generated text JSON matching ``schema`` (a JSON schema)."""
    try:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer
    except ImportError:
        raise LitFactoryError("response_format: JSON output needs the lm-format-enforcer package. Fix: pip install "
                              "-e \".[serve]\" (or pip install lm-format-enforcer).") from None
    try:
        parser = JsonSchemaParser(schema if schema is not None else JSON_OBJECT_SCHEMA)
    except Exception as err:  # the schema library's own errors, for a schema it cannot read
        raise LitFactoryError(f"response_format.json_schema.schema: not a schema this server can enforce ({err}). "
                              "Fix: send a JSON schema of objects, arrays, strings, numbers, booleans, enums."
                              ) from None
    enforcer = TokenEnforcer(_vocabulary_table(tokenizer, eos_ids), parser)

    def allowed_tokens(batch_id: int, sequence: Any) -> list[int]:
        # The first call sees the prompt alone; the enforcer keys its parser states on the token sequence.
        return enforcer.get_allowed_tokens(sequence.tolist()).allowed_tokens

    return allowed_tokens
