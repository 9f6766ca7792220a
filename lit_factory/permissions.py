"""File modes of what lit-factory saves: those the user's umask gives a plain ``open()`` or ``mkdir()``.

Some writers stage through private temporaries and keep their modes: transformers writes ``model.safetensors`` as
0600 and ``tempfile.mkdtemp`` makes 0700 folders, so another user or a serving container could not read a saved
model. Staged outputs get the umask's modes before they move into place.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read from /proc where the kernel reports it (setting it to read it races other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(root: Path) -> None:
    """Give ``root`` and everything under it the umask's modes: folders 0o777 and files 0o666 (0o777 for files
    that were executable), minus the umask. Symbolic links are left alone."""
    mask = current_umask()
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            full = 0o777 if path.stat().st_mode & 0o111 else 0o666
            os.chmod(path, full & ~mask)
