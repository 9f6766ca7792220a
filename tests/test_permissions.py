"""Saved models are readable as the user's umask allows (transformers writes safetensors 0600, mkdtemp 0700)."""

import os
import stat
from pathlib import Path

import pytest

from lit_factory.cli import main
from tiny_models import save_tiny_base


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in (root, *root.rglob("*"))}


def test_export_and_stage_outputs_take_the_umask_modes(tmp_path, umask_027):
    from lit_factory.model import ModelArgs
    from lit_factory.stages import SFT

    base = save_tiny_base(tmp_path / "base")
    assert main(["export", "--model", str(base), "--output", str(tmp_path / "exported")]) == 0
    exported = modes(tmp_path / "exported")
    assert "model.safetensors" in exported and "tokenizer.json" in exported
    assert exported == {name: 0o750 if name == "." else 0o640 for name in exported}

    stage = SFT(ModelArgs(path=str(base)))
    stage.configure_model()
    saved = stage.save_pretrained(tmp_path / "run")
    written = {name: mode for name, mode in modes(saved).items() if name != "."}
    assert "model.safetensors" in written
    assert written == {name: 0o640 for name in written}
