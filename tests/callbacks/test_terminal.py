"""What a user sees in the terminal: the step progress bar, the summary after it, no library noise, the loss plot
and the logged tags. The end-to-end checks share one quickstart-size `lit-factory fit` run in a pseudo-terminal."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
NOISE = ("Setting accelerator to CPU", "LeafSpec", "💡", "gradient_checkpointing_enable", "v_num", "Epoch 0/-")


def run_in_terminal(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on one pseudo-terminal, as a user's shell would; return what it
    printed, with the escape codes removed and carriage-return redraws split into lines."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "40", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    code = process.wait(timeout=600)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def screen_lines(text: str) -> list[str]:
    return [line.rstrip() for line in re.split(r"\r\n|\n|\r", text) if line.strip()]


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("terminal-runs")
    code, text = run_in_terminal(
        [sys.executable, "-m", "lit_factory", "fit", "--config", "recipes/quickstart.yaml",
         "--trainer.logger.init_args.save_dir", str(runs), "--trainer.max_steps", "12",
         "--trainer.val_check_interval", "6", "--trainer.log_every_n_steps", "1"], cwd=ROOT)
    assert code == 0, text[-3000:]
    return dict(text=text, lines=screen_lines(text), run=runs / "quickstart" / "version_0")


@pytest.mark.slow
def test_summary_is_the_last_thing_printed_and_names_the_saved_model(fit_run):
    lines = fit_run["lines"]
    start = max(i for i, line in enumerate(lines) if line.startswith("lit-factory fit finished:"))
    summary = lines[start:]
    assert len(summary) <= 8, summary  # nothing (no redraw of the bar) comes after the summary
    assert re.match(r"lit-factory fit finished: 12/12 steps in \d+s, [\d,]+ tokens/s$", summary[0]), summary[0]
    final = next(line for line in summary if line.strip().startswith("final "))
    assert re.search(r"train/loss \d+\.\d{4}", final) and re.search(r"val/loss \d+\.\d{4}", final), final
    saved = next(line for line in summary if line.strip().startswith("model:"))
    folder = Path(re.match(r"\s*model:\s+(\S+)", saved).group(1))
    assert folder == fit_run["run"] and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    plots = [Path(line.split()[-1]) for line in summary if line.strip().startswith("loss plot:")]
    assert sorted(p.name for p in plots) == ["training_eval_loss.png", "training_loss.png"]
    assert all(p.is_file() for p in plots)
    checkpoints = next(line for line in summary if line.strip().startswith("checkpoints:"))
    assert (Path(checkpoints.split()[1]) / "last.ckpt").is_file()


@pytest.mark.slow
def test_bar_counts_global_steps_and_shows_no_epoch_of_minus_two_or_v_num(fit_run):
    bar = [line for line in fit_run["lines"] if line.startswith("Training ")]
    assert bar, fit_run["text"][-2000:]
    # "Training <bar> 12/12 <elapsed> • <remaining> <speed>it/s train/loss: ..." once the run is done
    assert re.search(r"Training \S+ 12/12 \d+:\d\d:\d\d • 0:00:00 [\d.]+it/s train/loss: \d", bar[-1]), bar[-1]
    counts = [int(m.group(1)) for line in bar if (m := re.search(r" (\d+)/12 ", line))]
    assert counts == sorted(counts) and counts[-1] == 12


@pytest.mark.slow
def test_fit_prints_none_of_the_library_noise(fit_run):
    for text in NOISE:
        assert text not in fit_run["text"], text


@pytest.mark.slow
def test_loss_plots_draw_the_curve_inside_the_axes(fit_run):
    import matplotlib
    import matplotlib.image

    for name in ("training_loss.png", "training_eval_loss.png"):
        pixels = matplotlib.image.imread(fit_run["run"] / name)[..., :3]
        height, width = pixels.shape[:2]
        assert (width, height) == (640, 480)  # matplotlib's default figure at LLaMA-Factory's dpi 100
        params = matplotlib.rcParams
        left, right = int(params["figure.subplot.left"] * width), int(params["figure.subplot.right"] * width)
        top, bottom = int((1 - params["figure.subplot.top"]) * height), int((1 - params["figure.subplot.bottom"]) * height)
        inside = pixels[top + 2:bottom - 2, left + 2:right - 2]
        line = (abs(inside - [31 / 255, 119 / 255, 180 / 255]).max(axis=-1) < 0.08)  # the smoothed curve's colour
        columns = line.any(axis=0).nonzero()[0]
        assert line.sum() > 50, name
        # the curve runs from the first logged step to the last: across most of the plot area
        assert columns.max() - columns.min() > 0.8 * inside.shape[1], name


@pytest.mark.slow
def test_no_hp_metric_and_every_logged_tag_is_in_the_readme(fit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fit_run["run"]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "train/lr"} <= tags
    assert "hp_metric" not in tags
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [tag for tag in sorted(tags) if f"`{tag}`" not in readme] == []


def test_smoothing_is_tensorboards_ema_with_llamafactorys_weight():
    import math

    import numpy as np

    from lit_factory.callbacks.loss_plot import smooth

    values = list(np.random.default_rng(0).normal(2.0, 0.5, 120))
    n = len(values)
    w = 1.8 * (1 / (1 + math.exp(-0.05 * n)) - 0.5)
    # closed form of s_i = w s_(i-1) + (1 - w) x_i with s_(-1) = x_0
    i = np.arange(n)
    expected = [w ** (k + 1) * values[0] + (1 - w) * sum(w ** (k - j) * values[j] for j in range(k + 1)) for k in i]
    np.testing.assert_allclose(smooth(values), expected, rtol=1e-10)
    assert smooth([]) == [] and smooth([3.0]) == [3.0]


def _boring_fit(tmp_path, **trainer_options):
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lit_factory.callbacks import StepProgressBar

    screen = io.StringIO()
    bar = StepProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 140})
    seen = []

    class Probe(pl.Callback):  # what the bar's task holds after each optimizer step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            task = bar.progress.tasks[bar.train_progress_bar_id]
            seen.append((trainer.global_step, task.completed, task.total, task.description))

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[bar, Probe()], num_sanity_val_steps=0,
                         limit_val_batches=0, **trainer_options)
    trainer.fit(BoringModel())
    return seen, ANSI.sub("", screen.getvalue())


def test_bar_for_a_max_steps_run_counts_optimizer_steps_across_epochs(tmp_path, capsys):
    seen, screen = _boring_fit(tmp_path, max_steps=8, accumulate_grad_batches=2, limit_train_batches=6)
    assert [s[0] for s in seen][-1] == 8
    assert all(completed == step and total == 8 for step, completed, total, _ in seen)
    assert {description for *_, description in seen} == {"Training"}
    assert "8/8" in screen and "Epoch" not in screen and "v_num" not in screen
    out = capsys.readouterr().out
    assert "lit-factory fit finished: 8/8 steps" in out


def test_bar_for_an_epoch_run_names_the_epoch_and_totals_all_steps(tmp_path):
    seen, screen = _boring_fit(tmp_path, max_epochs=2, accumulate_grad_batches=2, limit_train_batches=4)
    assert all(total == 4 for _, _, total, _ in seen)
    assert [description for *_, description in seen] == ["Epoch 1/2"] * 4 + ["Epoch 2/2"] * 4
    assert "4/4" in screen


def test_noise_filters_drop_only_the_listed_messages(capfd):
    from lit_factory.quiet import silence_library_noise

    silence_library_noise()
    deepspeed = logging.getLogger("DeepSpeed")
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    handler = logging.StreamHandler(sys.stderr)
    for logger in (deepspeed, bnb):
        logger.addHandler(handler)
    try:
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline. Please make sure ...")
        deepspeed.warning("ZeRO stage 3 needs more memory")  # a warning that matters stays
    finally:
        for logger in (deepspeed, bnb):
            logger.removeHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()  # catch_warnings reset the filters
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", UserWarning)
        warnings.warn("this option will change in v6", FutureWarning)
    err = capfd.readouterr().err
    assert "Setting accelerator" not in err and "gemm_4bit_forward" not in err
    assert "ZeRO stage 3 needs more memory" in err
    assert [str(w.message) for w in caught] == ["this option will change in v6"]
