"""lit-factory side by side with LLaMA-Factory on CPU: the same tiny random Mistral-shaped model (saved once as
Hugging Face weights beside the real Mistral-7B tokenizer, so both load the same files), the same data
(LLaMA-Factory's alpaca_en_demo and dpo_en_demo through its dataset_info.json) and the same settings, in fp32.

    python benchmarks/vs_llamafactory.py --llamafactory-python /path/to/lf-venv/bin/python [--repeats 3]

One setting set per row is written as a LLaMA-Factory YAML (``llamafactory_config``); LLaMA-Factory trains it with
``run_exp`` (what ``llamafactory-cli train`` calls), lit-factory with ``lit-factory train`` (its translation of the
same file, ``lit_factory.compat.llamafactory``). Every run is its own process on a cold ``datasets`` cache, with
one torch thread (``--threads``); the sides alternate (LF, ours, ours, LF, ...) and the table shows medians. Rows:
LoRA SFT, full SFT and LoRA DPO, each with gradient checkpointing on and off, and the preprocessing figure of
``benchmarks/data.py`` (reused from there).

Figures, measured by the same probe on both sides (a Lightning callback in ours, a ``TrainerCallback`` in theirs):
- tokens/s: the non-padding tokens (``attention_mask``) of the training forwards of the timed optimizer steps (after
  ``--warmup`` steps), over their wall time; for DPO chosen and rejected rows both count;
- launch -> first step: from starting the process to the end of the first optimizer step (imports, model load and
  preprocessing of the data included);
- peak RSS: the training process's maximum resident set at the last step (``ru_maxrss``);
- checkpointing check: forwards of the first decoder layer per training forward of the decoder. Recomputation in
  the backward pass adds one (SFT: 1 off, 2 on; LoRA DPO, whose reference is the model with the adapter disabled:
  2 off, 3 on), so a flag that is silently ignored shows here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
SHARED = ROOT.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "mistral-7b-instruct-v0.1"
PEER_DATA = SHARED / "peer-data" / "llamafactory"
# Mistral-7B's tokenizer (32,000 tokens) on a few small Mistral layers. With Qwen2.5's 151,936-token vocabulary the
# head would be ~95 % of the compute of so small a model and a run of 25 steps would take minutes on 2 cores.
MODEL = dict(model_type="mistral", hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
# name -> LLaMA-Factory keys of the row (gradient checkpointing is added per run).
ROWS = {
    "LoRA SFT": dict(stage="sft", finetuning_type="lora", dataset="alpaca_en_demo", learning_rate=1.0e-4),
    "full SFT": dict(stage="sft", finetuning_type="full", dataset="alpaca_en_demo", learning_rate=1.0e-5),
    # one pair per micro-batch (chosen + rejected: two rows), so that a DPO step costs about what an SFT step does
    "LoRA DPO": dict(stage="dpo", finetuning_type="lora", dataset="dpo_en_demo", learning_rate=5.0e-6,
                     pref_beta=0.1, pref_loss="sigmoid", per_device_train_batch_size=1),
}


def llamafactory_config(row: str, checkpointing: bool, model: str, output_dir: str, steps: int) -> dict:
    """The LLaMA-Factory YAML keys of one run: the single source of both sides' settings."""
    config = dict(
        model_name_or_path=model, do_train=True, lora_rank=8, lora_alpha=16, lora_dropout=0.0, lora_target="all",
        dataset_dir=str(PEER_DATA), template="mistral", cutoff_len=512, overwrite_cache=True,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=steps,
        lr_scheduler_type="cosine", warmup_ratio=0.0, max_grad_norm=1.0, seed=42, bf16=False, fp16=False,
        disable_gradient_checkpointing=not checkpointing, dataloader_num_workers=0,
        output_dir=output_dir, overwrite_output_dir=True, logging_steps=5, save_steps=100000, report_to="none",
    )
    config.update(ROWS[row])
    return config


def build_model(folder: Path) -> None:
    """The tiny random model in fp32 safetensors, with the tokenizer files beside it."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(MODEL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options),
                                             dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    for file in TOKENIZER.iterdir():
        shutil.copyfile(file, folder / file.name)


# ---- the probe, in the training process ----------------------------------------------------------------------------
class Probe:
    """Counts tokens and layer forwards through hooks on the decoder, clocks optimizer steps, writes the report."""

    def __init__(self, report: str, warmup: int, steps: int) -> None:
        self.report, self.warmup, self.steps = report, warmup, steps
        self.tokens = self.decoder_calls = self.layer_calls = 0
        self.marks: dict[int, tuple[float, int]] = {}
        self.first_step_at = None
        self.checkpointing_flag = None
        self.dtype = ""

    def attach(self, model) -> None:
        import torch

        decoder = next(m for m in model.modules() if type(m).__name__.endswith("Model")
                       and isinstance(getattr(m, "layers", None), torch.nn.ModuleList))
        self.checkpointing_flag = bool(getattr(decoder, "gradient_checkpointing", False))
        self.dtype = str(next(p for p in model.parameters() if p.requires_grad).dtype)

        def count_tokens(module, args, kwargs):
            if torch.is_grad_enabled():  # training forwards; reference and evaluation passes run without grad
                mask = kwargs.get("attention_mask")
                ids = kwargs.get("input_ids", args[0] if args else None)
                self.tokens += int(mask.sum()) if mask is not None else ids.numel()
                self.decoder_calls += 1

        def count_layer(module, args):
            self.layer_calls += 1

        decoder.register_forward_pre_hook(count_tokens, with_kwargs=True)
        # The layer's first block (attention), not the layer itself: transformers 5.24 checkpoints a layer's
        # `forward`, so the layer's own hooks stay outside the recomputation.
        next(decoder.layers[0].children()).register_forward_pre_hook(count_layer)

    def step_done(self, step: int) -> None:
        if step == 1:
            self.first_step_at = time.time()
        if step in (self.warmup, self.steps):
            self.marks[step] = (time.perf_counter(), self.tokens)
        if step == self.warmup:
            self.calls_at_warmup = (self.decoder_calls, self.layer_calls)
        if step == self.steps:
            (start, tokens0), (end, tokens1) = self.marks[self.warmup], self.marks[self.steps]
            decoder = self.decoder_calls - self.calls_at_warmup[0]
            report = dict(tokens_per_sec=(tokens1 - tokens0) / (end - start), tokens=tokens1 - tokens0,
                          first_step_at=self.first_step_at, peak_rss_gib=resource.getrusage(
                              resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          layer_passes=(self.layer_calls - self.calls_at_warmup[1]) / decoder,
                          checkpointing_flag=self.checkpointing_flag, dtype=self.dtype)
            Path(self.report).write_text(json.dumps(report))


def __getattr__(name: str):
    # `--trainer.callbacks+=vs_llamafactory.LightningProbe`: built on first use, so that this script's own process
    # (and LLaMA-Factory's, which has no Lightning) never imports Lightning.
    if name == "LightningProbe":
        import lightning.pytorch as pl

        class LightningProbe(pl.Callback):
            def __init__(self) -> None:
                self.probe = Probe(os.environ["VS_REPORT"], int(os.environ["VS_WARMUP"]), int(os.environ["VS_STEPS"]))

            def on_train_start(self, trainer, pl_module) -> None:
                self.probe.attach(pl_module.model)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
                    self.probe.step_done(trainer.global_step)

        globals()[name] = LightningProbe
        return LightningProbe
    raise AttributeError(name)


def run_llamafactory(config_path: str) -> None:
    """LLaMA-Factory's training entry (`llamafactory-cli train X.yaml` calls `run_exp` the same way)."""
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    probe = Probe(os.environ["VS_REPORT"], int(os.environ["VS_WARMUP"]), int(os.environ["VS_STEPS"]))

    class TrainerProbe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            probe.attach(model)

        def on_step_end(self, args, state, control, **kwargs):
            probe.step_done(state.global_step)

    sys.argv = ["llamafactory-cli", config_path]
    run_exp(callbacks=[TrainerProbe()])


# ---- the parent: interleaved runs and the table --------------------------------------------------------------------
def run_side(side: str, python: str, config: dict, work: Path, warmup: int, threads: int = 1) -> dict:
    """One training run in its own process; the probe's report, with launch -> first step."""
    import yaml

    work.mkdir(parents=True)
    config_path = work / "llamafactory.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report = work / "report.json"
    env = {**os.environ, "VS_REPORT": str(report), "VS_WARMUP": str(warmup), "VS_STEPS": str(config["max_steps"]),
           "HF_DATASETS_CACHE": str(work / "datasets-cache"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCHMARKS)])}
    if side == "ours":
        command = [python, "-m", "lit_factory", "train", str(config_path),
                   "--trainer.callbacks+=vs_llamafactory.LightningProbe"]
    else:
        command = [python, str(Path(__file__)), "--child-llamafactory", str(config_path)]
    started = time.time()
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    if done.returncode != 0 or not report.exists():
        sys.exit(f"{side} run failed (exit {done.returncode}):\n{(work / 'log.txt').read_text()[-3000:]}")
    result = json.loads(report.read_text())
    result["first_step_s"] = result.pop("first_step_at") - started
    return result


def preprocessing(llamafactory_python: str, examples: int, workers: int, folder: Path) -> dict[str, float]:
    """examples/s of `benchmarks/data.py` (20,000 alpaca rows), one cold run each side."""
    import data

    folder.mkdir()
    data.make_data(folder, examples)
    ours = data.run(sys.executable, data.OURS, folder, workers, folder / "cache-ours")
    theirs = data.run(llamafactory_python, data.LLAMAFACTORY, folder, workers, folder / "cache-lf")
    return {"ours": examples / ours[1], "LF": examples / theirs[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llamafactory-python", help="python of an environment with llamafactory 0.9.5 installed")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per row (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--examples", type=int, default=20000, help="alpaca rows of the preprocessing figure")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing workers of that figure")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each training run (OMP_NUM_THREADS): on a shared machine more threads "
                             "than free cores spin and slow both sides down several-fold")
    parser.add_argument("--child-llamafactory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_llamafactory:
        run_llamafactory(args.child_llamafactory)
        return
    if not args.llamafactory_python:
        parser.error("give --llamafactory-python: the interpreter of a venv with `pip install llamafactory==0.9.5`")
    sys.path.insert(0, str(BENCHMARKS))
    pythons = {"LF": args.llamafactory_python, "ours": sys.executable}
    results: dict[tuple[str, bool, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vs-llamafactory-") as tmp:
        prep = preprocessing(args.llamafactory_python, args.examples, args.workers, Path(tmp) / "preprocessing")
        print(f"preprocessing examples/s: {json.dumps(prep)}", file=sys.stderr, flush=True)
        model = Path(tmp) / "model"
        build_model(model)
        runs = 0
        for repeat in range(args.repeats):
            for row in args.rows:
                for checkpointing in (True, False):
                    for side in (("LF", "ours") if runs % 2 == 0 else ("ours", "LF")):
                        work = Path(tmp) / f"run-{runs}-{side}"
                        config = llamafactory_config(row, checkpointing, str(model), str(work / "out"), args.steps)
                        result = run_side(side, pythons[side], config, work, args.warmup, args.threads)
                        results.setdefault((row, checkpointing, side), []).append(result)
                        state = "on" if checkpointing else "off"
                        print(f"[{repeat + 1}/{args.repeats}] {row}, checkpointing {state}, {side}: "
                              f"{json.dumps(result)}", file=sys.stderr, flush=True)
                    runs += 1
    print_table(args, results, prep)


def print_table(args, results: dict, prep: dict[str, float]) -> None:
    median = statistics.median
    print(f"Tiny Mistral (hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, vocabulary "
          f"{MODEL['vocab_size']:,}), fp32 CPU, cutoff 512, batch 2 (DPO: 1 pair) x accumulation 2, {args.steps} "
          f"steps "
          f"({args.steps - args.warmup} timed), median of {args.repeats} interleaved runs; LF = LLaMA-Factory")
    print("| row | checkpointing | tokens/s LF | tokens/s ours | ours/LF | launch -> 1st step LF / ours (s) "
          "| peak RSS LF / ours (GiB) | layer passes LF / ours |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in (row for row in ROWS if row in args.rows):
        for checkpointing in (True, False):
            lf, ours = results[(row, checkpointing, "LF")], results[(row, checkpointing, "ours")]
            value = lambda runs, key: median(r[key] for r in runs)  # noqa: E731
            ratio = median(o["tokens_per_sec"] / t["tokens_per_sec"] for o, t in zip(ours, lf))
            print(f"| {row} | {'on' if checkpointing else 'off'} | {value(lf, 'tokens_per_sec'):.0f} "
                  f"| {value(ours, 'tokens_per_sec'):.0f} | {ratio:.2f} "
                  f"| {value(lf, 'first_step_s'):.1f} / {value(ours, 'first_step_s'):.1f} "
                  f"| {value(lf, 'peak_rss_gib'):.2f} / {value(ours, 'peak_rss_gib'):.2f} "
                  f"| {value(lf, 'layer_passes'):.0f} / {value(ours, 'layer_passes'):.0f} |")
    print(f"| preprocessing, {args.examples:,} alpaca rows, {args.workers} workers (examples/s) | | {prep['LF']:.0f} "
          f"| {prep['ours']:.0f} | {prep['ours'] / prep['LF']:.2f} | | | |")
    dtypes = {r["dtype"] for runs in results.values() for r in runs}
    print(f"trainable parameter dtypes seen: {', '.join(sorted(dtypes))}")


if __name__ == "__main__":
    main()
