"""lit_factory.io: atomic file and folder outputs."""

import os
import stat

import pytest

from lit_factory.io import (
    write_entries_atomically,
    write_file_atomically,
    write_folder_atomically,
    write_text_atomically,
)


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


def test_replace_false_never_replaces_a_file_and_leaves_no_staging(tmp_path):
    target = tmp_path / "recipe.yaml"
    target.write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError):
        write_file_atomically(
            target, lambda staging: staging.write_text("shipped", encoding="utf-8"), replace=False)
    assert target.read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    fresh = write_file_atomically(tmp_path / "new.yaml", lambda staging: staging.write_text("x"), replace=False)
    assert fresh.read_text() == "x"


def test_entries_move_into_a_shared_folder_one_by_one_and_keep_the_others(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("step,loss\n")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "old.json").write_text("{}")

    def write(staging):
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / "tokenizer").mkdir()
        (staging / "tokenizer" / "new.json").write_text("{}")

    write_entries_atomically(run, write)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.csv", "model.safetensors", "tokenizer"]
    assert [p.name for p in (run / "tokenizer").iterdir()] == ["new.json"]  # a folder is replaced whole


def test_entries_refused_before_the_move_change_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"old")

    def refuse(staging):
        raise RuntimeError("not ours")

    with pytest.raises(RuntimeError, match="not ours"):
        write_entries_atomically(run, lambda staging: (staging / "model.safetensors").write_bytes(b"new"), refuse)
    assert (run / "model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in run.iterdir()) == ["model.safetensors"]  # no staging folder left
