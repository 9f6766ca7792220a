"""The state of one LLaMA-Factory translation, shared by ``lit_factory.compat.llamafactory`` (the file's keys and
stages) and ``lit_factory.compat.lf_methods`` (the method keys): what the file becomes and which keys were read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lit_factory.errors import LitFactoryError


@dataclass
class Translation:
    """What a LLaMA-Factory file becomes: a recipe (training files) or a command (merge/inference files)."""

    source: str
    kind: str  # "train", "export" or "chat"
    recipe: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    serve_options: list[str] = field(default_factory=list)  # what only `lit-factory serve` takes (--backend)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (LF key, where it went)
    warnings: list[str] = field(default_factory=list)


class Keys:
    """The file's keys; ``take`` marks one as accounted for and records where it went."""

    def __init__(self, config: dict[str, Any], source: str, translation: Translation) -> None:
        self.config, self.source, self.translation = dict(config), source, translation
        self.used: set[str] = set()

    def take(self, key: str, default: Any = None, to: str = "") -> Any:
        self.used.add(key)
        if key in self.config and to:
            self.translation.mapped.append((key, to))
        return self.config.get(key, default)

    def has(self, key: str) -> bool:
        """Whether ``key`` is set; an explicit null is LLaMA-Factory's default, so it counts as accounted for."""
        if key in self.config and self.config[key] is None:
            self.used.add(key)
        return self.config.get(key) is not None

    def fail(self, key: str, message: str) -> LitFactoryError:
        return LitFactoryError(f"{self.source}: `{key}: {self.config.get(key)}` {message}")
