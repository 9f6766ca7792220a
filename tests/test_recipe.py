"""Recipes read once, by the trainer CLI's parser (lit_factory.recipe): a user's own stage subclass, named by its
import path, loads into the board's form, round-trips through assembly and runs, and `lit-factory data` previews
it with the tokenizer the stage builds; bad recipes are one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_factory.cli import main
from lit_factory.errors import LitFactoryError
from lit_factory.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]
USER_STAGE = "custom_stage.TaggedSFT"  # tests/custom_stage.py, importable as pytest puts tests/ on sys.path


def quickstart(**stage: object) -> dict:
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    recipe["model"].update(stage)
    return recipe


def test_parse_checks_the_recipe_as_fit_does_and_names_file_and_key():
    parsed = parse_recipe(quickstart(class_path=USER_STAGE), source="mine.yaml")
    from custom_stage import TaggedSFT

    assert parsed.stage_class is TaggedSFT
    assert parsed.config.model.init_args.tag == "<tag>"  # the subclass's own default, filled in by the parser
    data = parsed.config.data.init_args
    assert data.cutoff_len == 128 and data.shuffle is True  # the recipe's value, the signature's default
    bad = quickstart()
    bad["model"]["init_args"]["lr_shedule"] = "cosine"
    with pytest.raises(LitFactoryError) as raised:
        parse_recipe(bad, source="mine.yaml")
    message = str(raised.value)
    assert message.startswith("mine.yaml: model.init_args.lr_shedule: lit_factory.stages.SFT has no such option.")
    assert "Fix:" in message and "\n" not in message
    with pytest.raises(LitFactoryError, match=r"^mine.yaml: model: - Import path torch.nn.Linear does not "
                                              r"correspond to a subclass of Stage"):
        parse_recipe(quickstart(class_path="torch.nn.Linear"), source="mine.yaml")


def test_board_loads_assembles_and_runs_a_user_stage(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")
    from transformers import AutoTokenizer

    from lit_factory.board import recipe as recipes
    from lit_factory.board.assemble import assemble_recipe, recipe_yaml, run_dir
    from lit_factory.board.workspace import Workspace

    monkeypatch.chdir(tmp_path)  # the board's runs start in its workspace
    workspace = Workspace(tmp_path)
    base = quickstart(class_path=USER_STAGE)
    base["model"]["init_args"]["tag"] = "<mark>"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(base))

    form = recipes.form_from_recipe(recipes.load_recipe("mine.yaml", workspace), run_name="user")
    assert form.stage == USER_STAGE and yaml.safe_load(form.stage_options) == {"tag": "<mark>"}
    form.output_dir, form.max_steps, form.max_epochs, form.val_size = "runs", "2", "", "0"
    recipe = assemble_recipe(recipes.load_recipe("mine.yaml", workspace), form, workspace)
    assert recipe["model"]["class_path"] == USER_STAGE and recipe["model"]["init_args"]["tag"] == "<mark>"
    again = recipes.form_from_recipe(recipe, run_name="user")  # the way back gives the same form
    assert (again.stage, again.stage_options, again.max_steps) == (form.stage, form.stage_options, "2")

    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_yaml(recipe))
    assert main(["fit", "--config", str(path)]) == 0, capsys.readouterr().err
    saved = AutoTokenizer.from_pretrained(run_dir(recipe))  # the run's output: TaggedSFT's tokenizer, not SFT's
    assert "<mark>" in saved.get_added_vocab()


def test_data_preview_of_a_user_stage_uses_the_stage_tokenizer(tmp_path, capsys):
    from transformers import AutoTokenizer

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"instruction": f"Mark item {i}.", "input": "", "output": f"<tag> item {i} <tag>"} for i in range(3)]
    (data / "tags.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"tags": {"file_name": "tags.json"}}))
    tagged = tmp_path / "tagged-tokenizer"  # the reference: the bundled tokenizer with the tag added, saved
    tokenizer = AutoTokenizer.from_pretrained(REPO / "lit_factory" / "assets" / "sparrow-tokenizer")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tag>"]}, replace_extra_special_tokens=False)
    tokenizer.save_pretrained(tagged)

    def preview(recipe: dict, *options: str) -> str:
        recipe["data"]["init_args"].update(dataset_dir=str(data), dataset=["tags"], val_size=0)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        capsys.readouterr()
        assert main(["data", "--config", str(path), "-n", "1", *options]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    user = preview(quickstart(class_path=USER_STAGE))
    assert "== tags: 3 examples (supervised)" in user and "«<tag> item 0 <tag>" in user
    # As the stage tokenizes (one token per tag): the same figures as the plain stage with the tagged tokenizer,
    # not those of the plain stage with the plain tokenizer (several tokens per tag).
    assert user == preview(quickstart(), "--tokenizer", str(tagged))
    assert user != preview(quickstart())
