"""Start-up figures: `lit-factory --help` latency, and time from process start to the first optimizer step of the
quickstart recipe (imports, model build, data preparation included). Optional: the whole quickstart's wall time.

    python benchmarks/startup.py [--repeats 3] [--quickstart]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quickstart", action="store_true", help="also time the whole quickstart run")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "lit_factory"]

    help_times = []
    for _ in range(args.repeats):
        started, _ = run(cli + ["--help"])
        help_times.append(time.time() - started)

    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    first_step = []
    with tempfile.TemporaryDirectory() as runs:
        for _ in range(args.repeats):
            started, out = run(cli + ["fit", "--config", "recipes/quickstart.yaml", "--trainer.max_steps", "1",
                                      "--trainer.logger.init_args.save_dir", runs,
                                      "--trainer.callbacks+=first_step_clock.FirstStepClock"], env)
            stamp = next(line for line in out.splitlines() if line.startswith("FIRST_STEP_AT"))
            first_step.append(float(stamp.split()[1]) - started)
        quickstart = None
        if args.quickstart:
            started, _ = run(cli + ["fit", "--config", "recipes/quickstart.yaml",
                                    "--trainer.logger.init_args.save_dir", runs])
            quickstart = time.time() - started

    print(f"| {'measure (median of %d)' % args.repeats:<42} | {'seconds':>8} |")
    print(f"|{'-' * 44}|{'-' * 10}|")
    print(f"| {'lit-factory --help':<42} | {statistics.median(help_times):>8.2f} |")
    print(f"| {'process start -> first optimizer step':<42} | {statistics.median(first_step):>8.2f} |")
    if quickstart is not None:
        print(f"| {'quickstart recipe, whole run (once)':<42} | {quickstart:>8.2f} |")


if __name__ == "__main__":
    main()
