"""Shared fixtures. The reference material (real tokenizers, official chat templates, LLaMA-Factory's demo data)
lives in ``../shared`` next to the repository, as in CI's clean checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def _shared(*parts: str) -> Path:
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference material not found: {path} (expected ../shared next to the repository)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository."""
    return _shared()


@pytest.fixture(scope="session")
def peer_data_dir() -> Path:
    """LLaMA-Factory's ``data/`` folder: demo datasets and their ``dataset_info.json``."""
    return _shared("peer-data", "llamafactory")


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Any:
    """The real Qwen2.5-Instruct tokenizer, loaded once per session. Tests must not modify it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_shared("tokenizers", "qwen2.5-instruct")))


@pytest.fixture(scope="session")
def mistral_tokenizer() -> Any:
    """The real Mistral-7B-Instruct v0.1 tokenizer, loaded once per session. Tests must not modify it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_shared("tokenizers", "mistral-7b-instruct-v0.1")))


@pytest.fixture(scope="session")
def render_reference_template() -> Callable[..., str]:
    """Render one of ``../shared/chat-templates/*.jinja`` the way transformers' ``apply_chat_template`` does.

    Every file but ``qwen2.5-instruct.jinja`` is indented for reading and is normalised first, as that folder's
    README says.
    """
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception

    compiled: dict[str, Any] = {}  # compiling takes milliseconds; property tests render thousands of times

    def render(name: str, messages: list[dict[str, str]], add_generation_prompt: bool = False, **tokens: Any) -> str:
        if name not in compiled:
            source = _shared("chat-templates", f"{name}.jinja").read_text(encoding="utf-8")
            if name != "qwen2.5-instruct":
                source = source.replace("    ", "").replace("\n", "")
            compiled[name] = env.from_string(source)
        return compiled[name].render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens)

    return render
