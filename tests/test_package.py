"""The package as a user installs it: a wheel in a fresh venv, used from a folder that is not the checkout."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lit_factory import shipped

REPO = Path(__file__).resolve().parents[1]
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "lit_factory", "templates", "recipes")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv with only the built wheel of lit-factory, seeing this interpreter's dependencies (no download)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"  # a copy, so building leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in WHEEL_SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
         str(source)], root, env)
    [wheel] = (root / "dist").glob("lit_factory-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         str(wheel)], root, env)
    # The dependencies (torch, lightning...) come from this interpreter's site-packages, added after the venv's own,
    # so its lit-factory (an editable checkout here) stays invisible: a .pth line adds a path, not its .pth hooks.
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         root, env).stdout.strip())
    (venv_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return elsewhere, {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}


@pytest.mark.slow
def test_wheel_ships_templates_and_recipes_and_runs_the_quickstart_anywhere(installed):
    elsewhere, env = installed
    where = run(["python", "-c", "import lit_factory; print(lit_factory.__file__)"], elsewhere, env).stdout
    assert "site-packages" in where and str(REPO) not in where

    listing = run(["lit-factory", "recipes"], elsewhere, env).stdout
    assert "quickstart.yaml" in listing and "sft/lora.yaml" in listing and "methods/dora.yaml" in listing

    # A template render: the quickstart's data through the shipped chatml template, loss-bearing text marked.
    preview = run(["lit-factory", "data", "--config", "recipes/quickstart.yaml", "-n", "1"], elsewhere, env).stdout
    assert "<|im_start|>user\n" in preview and "«" in preview and "<|im_end|>»" in preview
    templates = run(["python", "-c", "from lit_factory.data.templates import available_templates; "
                     "print(available_templates())"], elsewhere, env).stdout
    assert "'default'" in templates and "'llama3'" in templates

    # The quickstart as a user copies and runs it, from a folder without a checkout.
    run(["lit-factory", "recipes", "copy", "quickstart.yaml", "."], elsewhere, env)
    assert (elsewhere / "quickstart.yaml").read_text() == (REPO / "recipes" / "quickstart.yaml").read_text()
    run(["lit-factory", "fit", "--config", "quickstart.yaml", "--trainer.max_steps", "2",
         "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1"], elsewhere, env)
    [run_dir] = (elsewhere / "runs" / "quickstart").glob("version_*")
    assert (run_dir / "model.safetensors").stat().st_size > 0 and (run_dir / "tokenizer.json").is_file()


def test_recipes_cli_lists_shows_and_copies_without_replacing(tmp_path, capsys):
    from lit_factory.cli import main

    assert main(["recipes", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in shipped.list_recipes())
    assert main(["recipes", "show", "sft/lora"]) == 0
    assert capsys.readouterr().out == (REPO / "recipes" / "sft" / "lora.yaml").read_text()

    assert main(["recipes", "copy", "recipes/sft/lora.yaml", str(tmp_path) + "/"]) == 0
    copied = tmp_path / "lora.yaml"
    assert copied.read_text() == (REPO / "recipes" / "sft" / "lora.yaml").read_text()
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(copied.stat().st_mode) == 0o666 & ~mask
    copied.write_text("mine")
    capsys.readouterr()
    assert main(["recipes", "copy", "sft/lora.yaml", str(copied)]) == 2
    assert "already exists" in capsys.readouterr().err and copied.read_text() == "mine"
    assert main(["recipes", "show", "../pyproject.toml"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.yaml"]  # no staging file left behind


def test_shipped_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(shipped.resolve_shipped_path("recipes/quickstart.yaml")) == REPO / "recipes" / "quickstart.yaml"
    assert Path(shipped.resolve_shipped_path("lit_factory/assets/demo")) == REPO / "lit_factory" / "assets" / "demo"
    assert shipped.resolve_shipped_path("data") == "data"  # not something we ship: left to the caller's folder
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "quickstart.yaml").write_text("mine")
    assert shipped.resolve_shipped_path("recipes/quickstart.yaml") == "recipes/quickstart.yaml"  # the user's own wins


def test_board_lists_base_recipes_not_method_overlays():
    from lit_factory.board.recipe import list_recipes

    assert "sft/lora.yaml" in list_recipes() and not any(name.startswith("methods/") for name in list_recipes())
