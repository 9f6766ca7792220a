"""Every distributed strategy on one GPU (world size 1 is still a real strategy run): tokens/s, peak GPU memory and
the loss after the last step, as a table. Needs CUDA; prints why and exits 0 without it.

    python benchmarks/strategies_gpu.py [--steps 20] [--hidden 1024 --layers 16] [--seq 512 --batch 4]

Each row is `lit-factory fit` on the same random Qwen2-shaped model (LoRA r16 on all linear layers, bf16-mixed,
Sparrow tokenizer, the shipped demo data packed to --seq tokens) with one overlay of recipes/distributed/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "zero3_offload"]

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the script still answers --help
    Callback = object


class PeakMemory(Callback):
    """Writes ``torch.cuda.max_memory_allocated`` after training to ``path`` (read by the table)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        if trainer.is_global_zero:
            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else float("nan")
            Path(self.path).write_text(json.dumps({"peak_bytes": peak}))


def recipe(folder: Path, args: argparse.Namespace) -> Path:
    import yaml

    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": args.accelerator, "devices": 1, "max_steps": args.steps,
            "precision": "bf16-mixed" if args.accelerator == "cuda" else "32-true",
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "enable_checkpointing": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(folder), "name": "run", "version": 0}},
            "callbacks": [{"class_path": "strategies_gpu.PeakMemory", "init_args": {"path": str(folder / "peak.json")}}],
        },
        "model": {"class_path": "lit_factory.stages.SFT", "init_args": {
            "model": {"path": str(args.base), "dtype": "auto"},
            "finetuning": {"class_path": "lit_factory.model.LoRA", "init_args": {"r": 16, "alpha": 32,
                                                                                 "target_modules": "all"}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4}},
            "lr_schedule": "constant",
        }},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": {
            "dataset_dir": "lit_factory/assets/demo", "dataset": ["sparrow_sft"], "template": "chatml",
            "cutoff_len": args.seq, "packing": True, "batch_size": args.batch, "val_size": 0}},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def save_random_base(folder: Path, args: argparse.Namespace) -> Path:
    """One random Qwen2-shaped model saved like a hub checkpoint, so every strategy starts from the same weights
    (and rank 0 of a sharded run reads it the way it reads a real model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "lit_factory/assets/sparrow-tokenizer")
    config = AutoConfig.for_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(args.hidden // 256, 1), max_position_embeddings=args.seq,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(overlay: str, folder: Path, args: argparse.Namespace) -> dict:
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "lit_factory", "fit", "--config", str(recipe(folder, args))]
    if overlay != "none":
        command += ["--config", f"recipes/distributed/{overlay}.yaml"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + OVERLAYS.index(overlay))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("lit-factory: error:")]
        return {"strategy": overlay, "error": ((ours or lines or [f"exit {done.returncode}"])[-1])[:160]}
    with open(folder / "run" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    speeds = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    steady = speeds[len(speeds) // 2:] or speeds  # the second half: past warm-up and allocator growth
    peak = json.loads((folder / "peak.json").read_text())["peak_bytes"]
    return {"strategy": overlay, "tokens_per_sec": sum(steady) / max(len(steady), 1), "peak_gib": peak / 2**30,
            "final_loss": losses[-1] if losses else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per strategy")
    parser.add_argument("--only", nargs="*", choices=OVERLAYS, help="run these strategies only")
    parser.add_argument("--accelerator", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a float32 smoke run of the script itself (DeepSpeed rows fail there by design)")
    args = parser.parse_args()
    import torch

    if args.accelerator == "cuda" and not torch.cuda.is_available():
        print("strategies_gpu: no CUDA device here; nothing measured")
        return 0
    device = torch.cuda.get_device_name(0) if args.accelerator == "cuda" else "CPU"
    precision = "bf16-mixed" if args.accelerator == "cuda" else "32-true"
    print(f"{device}; Qwen2 shape hidden {args.hidden} x {args.layers} layers, LoRA r16, "
          f"{precision}, seq {args.seq} x batch {args.batch}, {args.steps} steps, world size 1")
    print(f"| {'strategy':<16} | {'tokens/s':>9} | {'peak GiB':>8} | {'final loss':>10} |")
    print(f"|{'-' * 18}|{'-' * 11}:|{'-' * 9}:|{'-' * 11}:|")
    with tempfile.TemporaryDirectory() as scratch:
        args.base = save_random_base(Path(scratch) / "base", args)
        for overlay in args.only or OVERLAYS:
            row = run(overlay, Path(scratch) / overlay, args)
            if "error" in row:
                print(f"| {overlay:<16} | failed: {row['error']} |")
            else:
                print(f"| {overlay:<16} | {row['tokens_per_sec']:>9.0f} | {row['peak_gib']:>8.2f} | "
                      f"{row['final_loss']:>10.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
