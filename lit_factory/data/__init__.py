"""Data: dataset_info.json entries -> aligned conversations -> chat-templated, loss-masked token batches.

``spec`` (dataset_info.json), ``loader`` (files, hub), ``align`` (formats -> standard rows), ``templates`` (chat
formats over ``templates/*.yaml``; ``tokenizer_template`` for a tokenizer's own jinja), ``tokenize`` (loss masks,
truncation, preference and prompt encodings, pretraining blocks), ``pipeline`` (per-dataset steps, caching, mixing),
``packing`` (SFT packing), ``collators`` (the batch format of each objective), ``objectives`` (what a stage trains
on: a dataset check, an encoding and a collator per class), ``datamodule`` (the Lightning data module) and
``preview`` (``lit-factory data``). Names are exported lazily so that importing this package does not import
lightning, torch or datasets.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DataModule": "lit_factory.data.datamodule",
    "Objective": "lit_factory.data.objectives",
    "PaddingCollator": "lit_factory.data.collators",
    "PairwiseCollator": "lit_factory.data.collators",
    "KTOCollator": "lit_factory.data.collators",
    "PromptCollator": "lit_factory.data.collators",
    "PackedCollator": "lit_factory.data.packing",
    "TokenizerTemplate": "lit_factory.data.tokenizer_template",
    "Template": "lit_factory.data.templates",
    "get_template": "lit_factory.data.templates",
    "encode_supervised": "lit_factory.data.tokenize",
    "DatasetSpec": "lit_factory.data.spec",
    "get_dataset_spec": "lit_factory.data.spec",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_factory.data' has no attribute {name!r}")
