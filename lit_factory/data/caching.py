"""Cache keys for the `datasets` map steps (align, tokenise), cheaper and stricter than `datasets`' own.

`datasets` keys a map's cache by pickling the mapped function with everything it closes over: a Qwen tokenizer takes
over a second to pickle, on every run; hashing its JSON state takes a tenth of that. And module-level helpers are
pickled by name, so an edit to the aligning or masking code would reuse stale caches; here the text of every module
of this package is part of the key.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset


@lru_cache(maxsize=1)
def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _tokenizer_digest(tokenizer: Any, vocab_size: int) -> str:
    # vocab_size is in the key so that a tokenizer that gained tokens after a first call is hashed again.
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer: let `datasets` pickle it
        return Hasher.hash(tokenizer)
    specials = [getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "chat_template")]
    return hashlib.sha256((backend.to_str() + repr(specials)).encode()).hexdigest()


def map_fingerprint(dataset: "Dataset", *settings: Any, tokenizer: Any = None) -> str:
    """The cache key of a map over ``dataset`` with ``settings`` (hashable by `datasets`) and ``tokenizer``."""
    from datasets.fingerprint import Hasher

    tokenizer_digest = _tokenizer_digest(tokenizer, len(tokenizer)) if tokenizer is not None else ""
    # `_fingerprint` is the input dataset's own cache key, the one `datasets` itself chains maps with.
    return Hasher.hash((dataset._fingerprint, _code_digest(), tokenizer_digest, settings))
