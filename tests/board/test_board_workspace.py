"""The board's workspace: every path a request names must resolve inside it (absolute paths, ``../`` escapes and
symlinks leading out are refused); shipped files are readable; hub ids pass where a model is asked for. Checked on
the helpers, on recipe assembly and the preview, and on a live board (a 422 with the message, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from lit_factory.board import recipe as recipes  # noqa: E402
from lit_factory.board.assemble import assemble_recipe  # noqa: E402
from lit_factory.board.workspace import OutsideWorkspace, Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spaces(tmp_path: Path) -> tuple[Workspace, Path]:
    """A workspace and, beside it, a folder outside it holding a secret and a dataset; a symlink inside leads out."""
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps([{"instruction": "secret", "output": "s3cret"}]))
    (outside / "dataset_info.json").write_text(json.dumps({"stolen": {"file_name": "secret.json"}}))
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "data").mkdir()
    (root / "data" / "dataset_info.json").write_text(json.dumps({"escape": {"file_name": "../../outside/secret.json"}}))
    return Workspace(root), outside


@pytest.mark.parametrize("value", ["/etc", "../outside", "link", "link/secret.json", "data/../../outside", "~"])
def test_paths_leading_out_are_refused(spaces, value):
    workspace, _ = spaces
    for kind in ("inside", "read", "model"):
        with pytest.raises(OutsideWorkspace) as raised:
            workspace.check(value, "output folder", kind)
        message = str(raised.value)
        assert message.startswith(f"output folder: {value!r} is outside the board's workspace {workspace.root}.")
        assert "Fix:" in message and "\n" not in message


def test_paths_inside_shipped_files_and_hub_ids_pass(spaces):
    workspace, outside = spaces
    assert workspace.path("runs/new", "output folder") == workspace.root / "runs" / "new"
    assert workspace.path(str(workspace.root / "data"), "dataset folder", "read") == workspace.root / "data"
    shipped = workspace.path("lit_factory/assets/demo", "dataset folder", "read")  # the quickstart's data
    assert shipped == REPO / "lit_factory" / "assets" / "demo" and (shipped / "dataset_info.json").is_file()
    (workspace.root / "lit_factory" / "assets" / "demo").mkdir(parents=True)  # the workspace's own copy wins
    assert workspace.path("lit_factory/assets/demo", "dataset folder", "read").is_relative_to(workspace.root)
    with pytest.raises(OutsideWorkspace):  # shipped files are readable, never a place to write
        workspace.path(str(shipped), "export folder", "inside")
    assert workspace.model_source("Qwen/Qwen2.5-0.5B-Instruct", "model path") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(OutsideWorkspace):
        workspace.model_source(str(outside), "model path")


def quickstart_form(**changes) -> recipes.TrainForm:
    form = recipes.form_from_recipe(recipes.load_recipe("quickstart.yaml"), run_name="unit")
    form.output_dir = "runs"
    for name, value in changes.items():
        setattr(form, name, value)
    return form


@pytest.mark.parametrize("changes, field", [
    ({"output_dir": "/tmp/elsewhere"}, "output folder"),
    ({"output_dir": "../runs"}, "output folder"),
    ({"output_dir": "link/runs"}, "output folder"),
    ({"dataset_dir": "link", "datasets": ["stolen"]}, "dataset folder"),
    ({"dataset_dir": "data", "datasets": ["escape"]}, "dataset 'escape' file"),  # dataset_info.json points out
    ({"tokenizer": "link"}, "model.tokenizer"),
    ({"template": "/etc/hostname"}, "template"),
])
def test_recipe_assembly_refuses_paths_out_of_the_workspace(spaces, changes, field):
    workspace, _ = spaces
    with pytest.raises(OutsideWorkspace, match=f"^{field}: .* is outside the board's workspace"):
        assemble_recipe(recipes.load_recipe("quickstart.yaml"), quickstart_form(**changes), workspace)


def test_a_saved_base_recipe_cannot_smuggle_paths_out(spaces):
    import yaml

    workspace, outside = spaces
    base = recipes.load_recipe("quickstart.yaml")
    base["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": str(outside / "ckpts")}})
    (workspace.root / "mine.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(OutsideWorkspace, match="trainer.callbacks.dirpath"):
        assemble_recipe(recipes.load_recipe("mine.yaml", workspace), quickstart_form(), workspace)
    with pytest.raises(OutsideWorkspace, match="recipe: "):
        recipes.load_recipe(str(outside / "dataset_info.json"), workspace)
    form = quickstart_form(stage="PPO", method="LoRA", method_options="", stage_panels={
        **quickstart_form().stage_panels, "ppo_reward_model": str(outside)})
    with pytest.raises(OutsideWorkspace, match="reward_model"):
        assemble_recipe(base, form, workspace)


def test_preview_refuses_data_files_out_of_the_workspace(spaces):
    from lit_factory.board.preview import preview_datasets

    workspace, outside = spaces
    with pytest.raises(OutsideWorkspace, match="dataset 'escape' file"):
        preview_datasets("data", ["escape"], None, "chatml", workdir=workspace)
    with pytest.raises(OutsideWorkspace, match="dataset folder"):
        preview_datasets(str(outside), ["stolen"], None, "chatml", workdir=workspace)
    summary, _ = preview_datasets("lit_factory/assets/demo", ["sparrow_sft"], None, "chatml", workdir=workspace)
    assert summary.startswith("sparrow_sft: ")  # shipped demo data is readable


def test_run_manager_watches_and_lists_only_runs_inside(spaces):
    from lit_factory.board.runs import RunManager

    workspace, outside = spaces
    run = outside / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "config.yaml").write_text("model: {}\n")
    (run / "recipe.yaml").write_text("model: {}\n")
    (workspace.root / "runs").mkdir()
    (workspace.root / "runs" / "linked").symlink_to(run, target_is_directory=True)
    manager = RunManager(workspace)
    assert manager.discover() == []
    for folder in (str(run), "../outside/run", "runs/linked"):
        with pytest.raises(OutsideWorkspace, match="run folder"):
            manager.watch(folder)
    with pytest.raises(OutsideWorkspace):
        manager.launch("x: 1\n", str(outside / "new"))
    assert not (outside / "new").exists()


@pytest.mark.slow
def test_live_board_answers_paths_out_of_the_workspace_with_422_and_writes_nothing(spaces, tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    from test_board_server import free_port, wait_for

    workspace, outside = spaces
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "lit_factory", "board", "--port", str(port), "--workspace",
                                str(workspace.root)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    before = sorted(os.listdir(outside))
    try:
        def answers():
            try:
                return httpx.get(f"{url}/config", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 180, "the board to start")
        client = Client(url, verbose=False)
        model = "lit_factory/assets/sparrow-tokenizer"
        calls = [
            ("/export", (model, "", str(outside / "merged"), "auto", "2GB", "en"), "Export folder"),
            ("/export", (model, "", "link/merged", "auto", "2GB", "en"), "Export folder"),
            ("/watch", ("../outside", "en"), "Watch a run folder"),
            ("/refresh_datasets", (str(outside), "en"), "Dataset folder"),
            ("/load_recipe", (str(outside / "dataset_info.json"), "en"), "Start from recipe"),
            ("/chat_load", (str(outside), "", "", "auto", "en"), "Model path or hub id"),
        ]
        for endpoint, args, label in calls:
            with pytest.raises(ValidationError) as raised:
                client.predict(*args, api_name=endpoint)
            assert f"{label}: " in str(raised.value) and "outside the board's workspace" in str(raised.value)
        values = client.predict("quickstart.yaml", "en", api_name="/load_recipe")
        from lit_factory.board.recipe import FORM_FIELDS

        fields = dict(zip(FORM_FIELDS, values))
        fields["datasets"] = fields["datasets"]["value"]
        fields.update(output_dir=str(outside / "runs"), max_steps="2")
        with pytest.raises(ValidationError, match="Output folder: .* is outside the board's workspace"):
            client.predict("quickstart.yaml", *[fields[name] for name in FORM_FIELDS], "en", api_name="/start")
        # The plain HTTP API answers the same refusal with a 422 naming the field.
        response = httpx.post(f"{url}/gradio_api/call/export",
                              json={"data": [model, "", str(outside / "merged"), "auto", "2GB", "en"]})
        assert response.status_code == 422
        assert "outside the board's workspace" in json.dumps(response.json())
        # and a path inside is accepted by the same endpoint (the validator passes, the handler runs)
        fields.update(output_dir="runs/board")
        shown = client.predict("quickstart.yaml", *[fields[name] for name in FORM_FIELDS], "en",
                               api_name="/show_recipe")
        assert "save_dir: runs" in shown[0] and shown[1].startswith("The recipe is valid")
    finally:
        process.terminate()
        process.wait(60)
    assert sorted(os.listdir(outside)) == before  # nothing written outside
