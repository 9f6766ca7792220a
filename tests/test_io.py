"""lit_factory.io: atomic file and folder outputs."""

import os
import stat

import pytest

from lit_factory.io import write_file_atomically, write_folder_atomically, write_text_atomically


def test_a_failed_write_leaves_the_old_file_and_no_staging(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomically(target, "old")

    def half_then_fail(staging):
        staging.write_text("half", encoding="utf-8")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_file_atomically(target, half_then_fail)
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_write_replaces_the_file_and_creates_its_folder(tmp_path):
    target = tmp_path / "run" / "recipe.yaml"
    write_text_atomically(target, "first")
    assert write_text_atomically(target, "second") == target
    assert target.read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["recipe.yaml"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        file = write_text_atomically(tmp_path / "file.txt", "x")
        folder = write_folder_atomically(tmp_path / "model", lambda staging: (staging / "w.bin").write_bytes(b"w"))
    finally:
        os.umask(previous)
    # What a plain open()/mkdir() would give: mkstemp's 0600 and mkdtemp's 0700 must not leak through.
    assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((folder / "w.bin").stat().st_mode) == 0o666 & ~umask


def test_a_failed_folder_write_leaves_no_output_and_no_staging(tmp_path):
    def fail(staging):
        (staging / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_folder_atomically(tmp_path / "out", fail)
    assert list(tmp_path.iterdir()) == []
