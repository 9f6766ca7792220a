"""Reading the board's form fields: numbers, optional numbers, comma lists and ``key: value`` YAML, each with a
one-line error that names the field."""

from __future__ import annotations

from typing import Any, Optional

from lit_factory.errors import LitFactoryError


def parse_number(label: str, text: Any, kind: type = float, minimum: Optional[float] = None) -> Any:
    """A form field as ``kind`` (``int`` or ``float``), at least ``minimum``; a one-line error naming ``label``."""
    try:
        value = kind(float(str(text).strip())) if kind is int else kind(str(text).strip())
    except (TypeError, ValueError):
        raise LitFactoryError(f"{label}: {text!r} is not a number. Fix: type a number such as 3e-4.") from None
    if kind is int and float(str(text).strip()) != value:
        raise LitFactoryError(f"{label}: {text!r} is not a whole number. Fix: type an integer.")
    if minimum is not None and value < minimum:
        raise LitFactoryError(f"{label}: {value} is below {minimum}. Fix: type a larger value.")
    return value


def parse_optional_int(label: str, text: Any, minimum: int = 1) -> Optional[int]:
    """An optional whole-number field: ``None`` when left empty."""
    return None if text is None or str(text).strip() == "" else parse_number(label, text, int, minimum)


def parse_options(label: str, text: str) -> dict[str, Any]:
    """A ``key: value`` YAML field as a dict (empty: ``{}``)."""
    import yaml

    if not (text or "").strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LitFactoryError(f"{label}: not valid YAML ({str(err).splitlines()[0]}). Fix: write `key: value` lines.") from None
    if not isinstance(value, dict):
        raise LitFactoryError(f"{label}: must be `key: value` lines (a mapping), got {type(value).__name__}.")
    return value


def dump_options(options: dict[str, Any]) -> str:
    """Options as the ``key: value`` YAML lines the form's options fields hold."""
    import yaml

    return yaml.safe_dump(options, sort_keys=False).strip() if options else ""


def names(text: str) -> list[str]:
    """A comma-separated field as a list of non-empty names."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def as_list(value: Any) -> list[str]:
    """A recipe value that is a comma string or a list, as a list of strings."""
    if isinstance(value, str):
        return names(value)
    return [str(part) for part in value or []]


def blank_if_none(value: Any) -> str:
    return "" if value is None else str(value)
