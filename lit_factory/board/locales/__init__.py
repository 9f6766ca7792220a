"""The board's words in each language: one dictionary per language (``en.py``, ``zh.py``, ``ru.py``), same keys.

Values may hold ``{placeholders}`` that :func:`text` fills. Error messages from the library stay in English; the
board translates the words around them.
"""

from __future__ import annotations

from importlib import import_module

LANGUAGES = {"en": "English", "zh": "中文", "ru": "Русский"}


def labels(lang: str) -> dict[str, str]:
    """The dictionary of ``lang`` (English for an unknown language)."""
    return import_module(f"lit_factory.board.locales.{lang if lang in LANGUAGES else 'en'}").LABELS


def text(lang: str, key: str, **values: object) -> str:
    """The word(s) for ``key`` in ``lang``, with ``values`` filled in."""
    return labels(lang)[key].format(**values)
