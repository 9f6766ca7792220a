"""Where a run's outputs go, and which files in a folder lit-factory wrote — so that a save never lands among, or
replaces, files of the user's (a Python session's current directory holds their README.md, which PEFT's model card
would overwrite).

A folder is ours when everything in it was written by a lit-factory save (listed in ``OUTPUTS_MANIFEST``) or is
something Lightning, its loggers or lit-factory's board put into a run folder (``RUN_FOLDER_ENTRIES``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Optional

from lit_factory.errors import LitFactoryError

#: Written by every save: the names of the files and folders that save put into the folder.
OUTPUTS_MANIFEST = ".lit-factory-outputs.json"

#: What Lightning (checkpoints, TensorBoard/CSV loggers, LightningCLI's config), ``lit-factory predict`` and the
#: board (recipe, log, progress) and ``LossPlot`` (training_*.png) write into a run folder besides the saved model.
RUN_FOLDER_ENTRIES = (
    OUTPUTS_MANIFEST, ".saving", "checkpoints", "lightning_logs", "hparams.yaml", "metrics.csv", "config.yaml",
    "events.out.tfevents.*", "recipe.yaml", "board.log", "progress.json", "generated_predictions.jsonl",
    "predict_results.json", "training_*.png",
)


def saved_outputs(folder: Path) -> set[str]:
    """The names earlier lit-factory saves wrote into ``folder`` (empty when none did)."""
    try:
        return set(json.loads((folder / OUTPUTS_MANIFEST).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


def foreign_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that lit-factory did not write, sorted."""
    if not folder.is_dir():
        return []
    ours = saved_outputs(folder)
    return sorted(
        entry.name for entry in folder.iterdir()
        if entry.name not in ours and not any(fnmatch.fnmatch(entry.name, p) for p in RUN_FOLDER_ENTRIES)
    )


def choose_output_folder(folder: Path) -> tuple[Path, Optional[str]]:
    """``folder`` itself when it is ours; else a fresh ``<folder>/runs/version_<n>``, with the reason as a sentence.

    The current directory is never used as it is: it is where a Python session or a shell happens to be, not a
    folder the user picked for this run.
    """
    folder = Path(folder)
    foreign = foreign_entries(folder)
    if folder.resolve() != Path.cwd().resolve() and not foreign:
        return folder, None
    runs = folder / "runs"
    if runs.exists() and not runs.is_dir():
        raise LitFactoryError(
            f"trainer.default_root_dir: {str(folder)!r} holds files lit-factory did not write and its 'runs' is a "
            "file. Fix: set trainer.default_root_dir (or a logger's save_dir) to an empty folder for the run's outputs."
        )
    version = 0
    while (runs / f"version_{version}").exists():
        version += 1
    reason = "is the current directory" if not foreign else (
        f"holds files lit-factory did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
    )
    return runs / f"version_{version}", f"{folder} {reason}"


def check_replaceable(folder: Path, names: list[str]) -> None:
    """Refuse to save ``names`` into ``folder`` when one of them exists there and an earlier save did not write it."""
    ours = saved_outputs(folder)
    clashes = sorted(name for name in names if (folder / name).exists() and name not in ours)
    if clashes:
        raise LitFactoryError(
            f"save: {str(folder)!r} already holds {', '.join(clashes)}, which lit-factory did not write; "
            "nothing was written. Fix: save into an empty folder."
        )


def write_manifest(staging: Path, folder: Path) -> None:
    """Put the manifest of ``folder`` (earlier saves plus what ``staging`` holds) into ``staging``, to move with it."""
    names = saved_outputs(folder) | {entry.name for entry in staging.iterdir()} | {OUTPUTS_MANIFEST}
    (staging / OUTPUTS_MANIFEST).write_text(json.dumps(sorted(names), indent=1) + "\n", encoding="utf-8")
