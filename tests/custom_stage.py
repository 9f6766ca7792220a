"""A user's own stage, defined outside lit-factory as ``mypkg.MyStage`` would be: recipes name it by its import
path (``model.class_path: custom_stage.TaggedSFT``), and the board and `lit-factory data` take it (test_recipe.py)."""

from __future__ import annotations

from typing import Any

from lit_factory.model.builder import ModelArgs
from lit_factory.stages.sft import SFT


class TaggedSFT(SFT):
    """SFT whose tokenizer gains a special token of the user's (a marker their data uses, read as one token).

    Args:
        model: As ``SFT``.
        tag: The special token added to the tokenizer.
    """

    def __init__(self, model: ModelArgs, tag: str = "<tag>", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.tag = tag
        self.tokenizer.add_special_tokens({"additional_special_tokens": [tag]}, replace_extra_special_tokens=False)
