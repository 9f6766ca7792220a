"""The board's run manager: launch ``lit-factory fit`` as a subprocess, watch it, stop it, resume it.

One run trains at a time (a second launch is refused); any number of run folders can be watched. A run folder
holds ``recipe.yaml`` (what was launched), ``board.log`` (the subprocess's output), ``progress.json`` (from
:class:`~lit_factory.board.progress.ProgressFile`), the TensorBoard events and ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lit_factory.board.progress import PROGRESS_FILE
from lit_factory.board.workspace import Workspace
from lit_factory.errors import LitFactoryError
from lit_factory.io import write_text_atomically

RECIPE_FILE = "recipe.yaml"
LOG_FILE = "board.log"
# The recipe a run folder was made from: the board's copy, or the resolved config LightningCLI saves.
RUN_CONFIG_FILES = (RECIPE_FILE, "config.yaml")


@dataclass
class Run:
    """One launched training process and its folder."""

    name: str
    log_dir: Path
    process: Optional[subprocess.Popen] = None
    stop_requested: bool = False
    started: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> str:
        """``running``, ``stopping``, ``finished``, ``stopped``, ``failed (exit N)`` or ``idle`` (found on disk)."""
        if self.process is None:
            return _progress(self.log_dir).get("status", "idle")
        code = self.process.poll()
        if code is None:
            return "stopping" if self.stop_requested else "running"
        if self.stop_requested:
            return "stopped"
        return "finished" if code == 0 else f"failed (exit {code})"


def _progress(log_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((log_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class RunManager:
    """Launches runs in the workspace ``workdir`` and keeps the ones this board started or was asked to watch; every
    run folder lies inside the workspace."""

    def __init__(self, workdir: str | Path | Workspace = ".") -> None:
        self.workspace = workdir if isinstance(workdir, Workspace) else Workspace(workdir)
        self.workdir = self.workspace.root
        self.runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def _abs(self, path: str | Path, what: str = "run folder") -> Path:
        return self.workspace.path(path, what, "inside")

    def run_name(self, folder: Path) -> str:
        """A run is named by its folder, relative to the working directory when inside it."""
        return str(folder.relative_to(self.workdir)) if folder.is_relative_to(self.workdir) else str(folder)

    def active(self) -> Optional[Run]:
        """The run that is training now, if any."""
        return next((run for run in self.runs.values() if run.running), None)

    def launch(
        self, recipe_text: str, log_dir: str | Path, ckpt_path: Optional[str] = None, subcommand: str = "fit"
    ) -> Run:
        """Save ``recipe_text`` as ``<log_dir>/recipe.yaml`` and start ``lit-factory <subcommand> --config`` on it
        (``fit``, or ``predict`` for the Evaluate tab's batch prediction)."""
        with self._lock:
            busy = self.active()
            if busy is not None:
                raise LitFactoryError(
                    f"run {busy.name!r} is still training; one run at a time. Fix: wait for it or press Stop."
                )
            folder = self._abs(log_dir)
            if ckpt_path is None and (folder / RECIPE_FILE).exists():
                raise LitFactoryError(
                    f"run folder {folder} already holds a run. Fix: change the run name (or Resume that run)."
                )
            folder.mkdir(parents=True, exist_ok=True)
            recipe_path = folder / RECIPE_FILE
            write_text_atomically(recipe_path, recipe_text)
            (folder / PROGRESS_FILE).unlink(missing_ok=True)
            # `python -m lit_factory` is `lit-factory` for the interpreter running the board (same environment).
            arguments = [subcommand, "--config", str(recipe_path), *(["--ckpt_path", ckpt_path] if ckpt_path else [])]
            command = [sys.executable, "-m", "lit_factory", *arguments]
            log = open(folder / LOG_FILE, "a", encoding="utf-8")
            log.write(f"$ lit-factory {' '.join(arguments)}\n")
            log.flush()
            process = subprocess.Popen(
                command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # Own session: the board's terminal Ctrl-C does not reach the run; SIGINT is reset to Python's
                # default so Stop's SIGINT becomes KeyboardInterrupt (a shell's background job would ignore it).
                start_new_session=True, preexec_fn=_default_sigint,
            )
            log.close()
            name = self.run_name(folder)
            run = Run(name=name, log_dir=folder, process=process)
            self.runs[name] = run
            return run

    def watch(self, log_dir: str | Path) -> Run:
        """Add an existing run folder (e.g. from an earlier board session) to the runs shown."""
        folder = self._abs(log_dir)
        if not (folder / RECIPE_FILE).is_file():
            raise LitFactoryError(f"run folder {folder}: no {RECIPE_FILE} in it. Fix: give a folder the board ran.")
        for run in self.runs.values():
            if run.log_dir == folder:
                return run
        run = Run(name=self.run_name(folder), log_dir=folder)
        self.runs[run.name] = run
        return run

    def discover(self, folder: str = "runs") -> list[str]:
        """Names of the runs to pick from: those this board knows plus every run folder under ``<workdir>/<folder>``
        that saved a model or adapter, started from the CLI too (``lit-factory fit`` writes its resolved
        ``config.yaml`` beside the outputs)."""
        root = self._abs(folder)
        found = [*root.glob("**/config.json"), *root.glob("**/adapter_config.json")] if root.is_dir() else []
        for output in sorted(found):
            run_dir = output.parent
            if not self.workspace.contains(run_dir):  # a symlink out of the workspace
                continue
            hidden = any(part.startswith(".") for part in run_dir.relative_to(root).parts)  # staging folders
            if not hidden and any((run_dir / name).is_file() for name in RUN_CONFIG_FILES):
                name = self.run_name(run_dir)
                if not any(run.log_dir == run_dir for run in self.runs.values()):
                    self.runs[name] = Run(name=name, log_dir=run_dir)
        return list(self.runs)

    def get(self, name: str) -> Run:
        if not name or name not in self.runs:
            raise LitFactoryError(f"run {name!r} is unknown. Fix: pick a run from the list (or start one).")
        return self.runs[name]

    def stop(self, name: str) -> Run:
        """Send SIGINT: Lightning stops after the current step and saves ``checkpoints/stopped.ckpt``."""
        run = self.get(name)
        if not run.running:
            raise LitFactoryError(f"run {name!r} is not training ({run.status()}); nothing to stop.")
        run.stop_requested = True
        run.process.send_signal(signal.SIGINT)
        return run

    def resume(self, name: str) -> Run:
        """Start the run again from its ``checkpoints/last*.ckpt``, with the same recipe and folder.

        The command says ``--ckpt_path last`` rather than the file: given a file, LightningCLI rebuilds the stage
        from the checkpoint's hyperparameters, which hold plain values without the stage's class.
        """
        run = self.get(name)
        if run.running:
            raise LitFactoryError(f"run {name!r} is still training. Fix: stop it first.")
        if latest_checkpoint(run.log_dir) is None:
            raise LitFactoryError(
                f"run {name!r}: no last*.ckpt in {run.log_dir / 'checkpoints'} to resume from. Fix: Stop saves one."
            )
        recipe = (run.log_dir / RECIPE_FILE).read_text(encoding="utf-8")
        return self.launch(recipe, run.log_dir, ckpt_path="last")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every run this board started (used when the board exits)."""
        for run in self.runs.values():
            if run.running:
                run.stop_requested = True
                run.process.send_signal(signal.SIGINT)
        for run in self.runs.values():
            if run.process is not None:
                try:
                    run.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    run.process.kill()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def latest_checkpoint(log_dir: Path) -> Optional[Path]:
    """The newest ``last*.ckpt`` under ``<log_dir>/checkpoints`` (what ``ckpt_path: last`` resumes from)."""
    checkpoints = sorted((log_dir / "checkpoints").glob("last*.ckpt"), key=lambda path: path.stat().st_mtime)
    return checkpoints[-1] if checkpoints else None


# ---- what the monitor shows ---------------------------------------------------------------------------------------
def progress_summary(run: Run) -> dict[str, Any]:
    """Step, total, percent, ETA (seconds) and status of a run."""
    record = _progress(run.log_dir)
    step, total = int(record.get("step", 0)), int(record.get("total", 0))
    done_here = step - int(record.get("start_step", 0))
    eta = None
    if run.running and done_here > 0 and total > step:
        eta = record.get("elapsed", 0.0) / done_here * (total - step)
    return {"step": step, "total": total, "percent": 100.0 * step / total if total else 0.0, "eta": eta,
            "status": run.status()}


def log_tail(run: Run, lines: int = 40) -> str:
    """The last lines of the run's output; progress-bar redraws (carriage returns) keep only their last state."""
    path = run.log_dir / LOG_FILE
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    shown = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in text.split("\n")]
    return "\n".join(shown[-lines:]).strip("\n")


def loss_curve(log_dir: Path) -> list[tuple[int, float, str]]:
    """``(step, value, series)`` points of ``train/loss`` and ``val/loss`` from the run's TensorBoard events, or
    from its ``metrics.csv`` (a run with the CSV logger)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = _csv_points(log_dir / "metrics.csv")
    # One accumulator per events file: a resumed run appends a second file to the same folder.
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags().get("scalars", [])
        for tag in ("train/loss", "val/loss"):
            if tag in tags:
                points += [(int(event.step), float(event.value), tag) for event in accumulator.Scalars(tag)]
    latest = {}
    for step, value, tag in points:  # a step logged twice (resume replays it) keeps its newest value
        latest[(tag, step)] = value
    return sorted(((step, value, tag) for (tag, step), value in latest.items()), key=lambda p: (p[2], p[0]))


def _csv_points(path: Path) -> list[tuple[int, float, str]]:
    """``train/loss`` and ``val/loss`` rows of Lightning's ``CSVLogger`` file (one column per metric; empty cells
    where a row logs other metrics)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [(int(row["step"]), float(row[tag]), tag) for row in rows for tag in ("train/loss", "val/loss")
            if row.get(tag) not in (None, "") and row.get("step") not in (None, "")]
