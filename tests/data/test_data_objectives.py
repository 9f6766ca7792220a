"""A data objective of one's own: one ``Objective`` subclass, named by a stage subclass, reaches the data module
through the CLI's link and decides the rows it checks and encodes, the collator, and what the run records."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lit_factory.cli import main
from lit_factory.errors import LitFactoryError

SPARROW = "lit_factory/assets/sparrow-tokenizer"
TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
REPLIES = ["the first reply", "a second, longer reply to learn", "three", "and the fourth reply here"]

# What a user writes next to a recipe: an objective (the assistant replies alone, no prompt, no template, each
# followed by eos, padded to 64 positions) and a stage that names it and keeps the batches it is given.
USER_MODULE = '''
from lit_factory.data.collators import PaddingCollator
from lit_factory.data.objectives import Objective
from lit_factory.errors import LitFactoryError
from lit_factory.stages import SFT

BATCHES = []


class RepliesOnly(Objective):
    """The last reply of each conversation on its own; every token is a target."""

    name = "replies_only"
    columns = ("input_ids", "labels")
    uses_template = False

    def check(self, spec):
        if spec.ranking:
            raise LitFactoryError(f"entry {spec.name!r}: replies_only reads one reply per row")

    def encode_row(self, batch, index, encoding):
        tokenizer = encoding.tokenizer
        reply = batch["messages"][index][-1]["content"]
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"][: encoding.cutoff_len - 1]
        return {"input_ids": ids + [tokenizer.eos_token_id], "labels": ids + [tokenizer.eos_token_id]}

    def collator(self, pad_token_id, settings):
        return PaddingCollator(pad_token_id, pad_to_multiple_of=64)

    def window_options(self):
        return {"chosen_only": False}


class RepliesLM(SFT):
    """SFT's loss on the replies alone."""

    data_objective = RepliesOnly

    def loss(self, batch):
        BATCHES.append(batch)
        return super().loss(batch)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module, importable as ``my_objectives`` (and forgotten afterwards)."""
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_objectives", raising=False)
    yield tmp_path
    sys.modules.pop("my_objectives", None)


def write_data(folder: Path) -> None:
    rows = [{"instruction": f"question {i}?", "output": reply} for i, reply in enumerate(REPLIES)]
    pairs = [{"instruction": "q", "chosen": "yes", "rejected": "no"}]
    (folder / "replies.json").write_text(json.dumps(rows))
    (folder / "pairs.json").write_text(json.dumps(pairs))
    (folder / "dataset_info.json").write_text(json.dumps({
        "replies": {"file_name": "replies.json"},
        "pairs": {"file_name": "pairs.json", "ranking": True,
                  "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
    }))


def test_an_objective_of_ones_own_plugs_into_a_stage_and_the_data_module(user_module):
    from transformers import AutoTokenizer

    folder = user_module
    write_data(folder)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 2,
                    "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(folder), "name": "mine"}}},
        "model": {"class_path": "my_objectives.RepliesLM", "init_args": {
            "model": {"tokenizer": SPARROW, "config": TINY}, "finetuning": {"class_path": "lit_factory.model.Full"}}},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": {
            "dataset": ["replies"], "dataset_dir": str(folder), "cutoff_len": 48, "batch_size": 2}},
    }))
    assert main(["fit", "--config", str(recipe)]) == 0

    import my_objectives

    tokenizer = AutoTokenizer.from_pretrained(SPARROW)
    expected = sorted(tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                      for reply in REPLIES)
    batches = my_objectives.BATCHES
    assert len(batches) == 2
    # The objective's collator: padded to 64 positions (the built-in supervised one pads to the longest row).
    assert all(batch["input_ids"].shape == (2, 64) for batch in batches)
    # The objective's encoding: each reply alone, no prompt or chat markup, every token a target.
    rows = sorted(ids[mask.bool()].tolist() for batch in batches
                  for ids, mask in zip(batch["input_ids"], batch["attention_mask"]))
    assert rows == expected
    labels = sorted(row[row != -100].tolist() for batch in batches for row in batch["labels"])
    assert labels == expected
    # The run records the objective by its class path (hparams.yaml holds the data module's arguments too).
    hparams = yaml.safe_load(next(folder.glob("mine/version_0/hparams.yaml")).read_text())
    assert hparams["objective"] == "my_objectives.RepliesOnly"

    # The same class through the Python API: its dataset check speaks for it.
    from lit_factory.data.datamodule import DataModule

    data = DataModule("pairs", str(folder), tokenizer, objective=my_objectives.RepliesLM.data_objective)
    with pytest.raises(LitFactoryError, match="entry 'pairs': replies_only reads one reply per row"):
        data.setup()
