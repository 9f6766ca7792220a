"""Atomic outputs: a file or folder is written beside its target under a hidden name and renamed into place, so a
kill mid-write never leaves half an output under the name a reader (the board, ``--ckpt_path``, a loader) opens.

A rename is atomic only within one file system, hence the staging lives in the target's own folder (not ``TMPDIR``).
Staged outputs get the modes the user's umask gives a plain ``open()`` (see :mod:`lit_factory.permissions`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from lit_factory.permissions import apply_umask_modes, current_umask


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (the folder entry itself is data the kernel may still hold)."""
    if os.name != "posix":  # Windows cannot open a folder for fsync; its rename is durable enough
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_atomically(target: str | Path, write: Callable[[Path], None], staging: Optional[Path] = None,
                          replace: bool = True) -> Path:
    """Run ``write(staging_file)`` on a hidden file beside ``target``, fsync it, give it the umask's mode and rename
    it onto ``target``. If ``write`` fails, ``target`` keeps its old content and the staging file is removed.

    ``staging``: a fixed hidden name beside ``target`` for writers that clean up after a kill by that name (default:
    a fresh one). ``replace=False`` never replaces a file: an existing ``target`` (even one created meanwhile)
    raises ``FileExistsError``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        staging = Path(name)
    try:
        write(staging)
        with open(staging, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(staging, 0o666 & ~current_umask())  # mkstemp makes it 0600
        if replace:
            os.replace(staging, target)
        else:
            os.link(staging, target)  # fails instead of replacing a file created meanwhile
    finally:
        staging.unlink(missing_ok=True)
    fsync_folder(target.parent)
    return target


def write_text_atomically(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_file_atomically(target, lambda staging: staging.write_text(text, encoding="utf-8"))


def write_folder_atomically(output: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging_dir)`` in a hidden folder beside ``output`` (which must be absent or empty) and move it
    into place only when done; staging folders a killed earlier write left are removed first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write(staging)
        apply_umask_modes(staging)  # mkdtemp's 0700 and transformers' 0600 safetensors: readable as umask allows
        if output.exists():
            output.rmdir()
        staging.replace(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_folder(output.parent)
    return output


def write_entries_atomically(
    directory: Path,
    write: Callable[[Path], None],
    before_move: Optional[Callable[[Path], None]] = None,
    staging_name: str = ".saving",
) -> Path:
    """Run ``write(staging)`` in the hidden folder ``directory/staging_name``, then rename each entry it wrote onto
    ``directory/<entry>`` (a folder replaced whole), so an interrupted save never leaves a half-written file where a
    good one was; entries of ``directory`` it did not write stay. ``before_move(staging)`` runs before anything
    moves and may refuse the move by raising. A staging folder a killed earlier write left is removed first.

    For a folder that holds more than one writer's outputs (a run folder: logs, checkpoints, the saved model), where
    :func:`write_folder_atomically`'s one rename of the whole folder cannot serve.
    """
    directory = Path(directory)
    staging = directory / staging_name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        if before_move is not None:
            before_move(staging)
        apply_umask_modes(staging)  # transformers writes safetensors 0600; saved files follow the user's umask
        for item in staging.iterdir():
            target = directory / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_folder(directory)
    return directory
