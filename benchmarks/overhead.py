"""lit-factory's overhead: a LoRA SFT run through the SFT stage + Lightning Trainer against a plain PyTorch + PEFT
loop on the same model, batches and seed. Prints tokens/s and peak memory side by side (target: ours within 5%).

    python benchmarks/overhead.py                      # tiny model on this machine, 5 interleaved repeats
    python benchmarks/overhead.py --shape llama2-7b    # Llama-2-7B shape, LoRA r16, seq 2048 x batch 4, bf16, GC

Each side runs in its own process so that peak memory (CUDA allocator peak, or the process's max RSS on CPU) is
its own. The sides alternate (plain, ours, ours, plain, ...) and the table shows medians, with the ratio of each
repeat's pair, so that load from other processes on a shared machine falls on both sides alike.
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

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "lit_factory" / "assets" / "sparrow-tokenizer")
SHAPES = {
    "tiny": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=8000, max_position_embeddings=1024),
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}


def make_batches(args, vocab_size: int):
    """Fixed-shape batches: random tokens, loss on the second half of each sequence (the 'response')."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab_size, (args.batch, args.seq), generator=generator)
        labels = ids.clone()
        labels[:, : args.seq // 2] = -100
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_plain(args) -> dict:
    """The reference: transformers + PEFT + torch.optim in a hand-written loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device(args.device)
    options = dict(SHAPES[args.shape])
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.manual_seed(args.seed)
    with device:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options),
                                                 dtype=dtype, attn_implementation="sdpa")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = make_batches(args, SHAPES[args.shape]["vocab_size"])
    model.train()
    started = None
    for step, batch in enumerate(batches):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"tokens_per_sec": (args.steps - args.warmup) * args.batch * args.seq / elapsed,
            "peak_gb": peak_memory_gb(device), "last_loss": float(loss)}


def run_ours(args) -> dict:
    """lit-factory: the SFT stage with LoRA, trained by a Lightning Trainer with a TensorBoard logger and the progress
    bar `lit-factory fit` adds (``StepProgressBar``)."""
    import lightning.pytorch as pl
    import torch
    from functools import partial
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_factory.callbacks import StepProgressBar
    from lit_factory.model import LoRA, ModelArgs
    from lit_factory.stages import SFT

    device = torch.device(args.device)
    batches = make_batches(args, SHAPES[args.shape]["vocab_size"])

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == args.steps - 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.elapsed = time.perf_counter() - self.started

    class Batches(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None)

    stage = SFT(ModelArgs(config=dict(SHAPES[args.shape]), tokenizer=TOKENIZER,
                          dtype="bfloat16" if args.bf16 else "float32",
                          gradient_checkpointing=args.gradient_checkpointing),
                LoRA(r=args.rank, alpha=2 * args.rank), partial(torch.optim.AdamW, lr=1e-4), lr_schedule="constant")
    stage.on_train_end = lambda: None  # the saved adapter is not part of the measurement
    torch.manual_seed(args.seed)
    timer = Timer()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=args.steps,
                             precision="bf16-mixed" if args.bf16 else "32-true",
                             logger=TensorBoardLogger(run_dir, name="bench"), log_every_n_steps=10,
                             enable_checkpointing=False, enable_model_summary=False, default_root_dir=run_dir,
                             callbacks=[timer, StepProgressBar(summary=False)])
        trainer.fit(stage, datamodule=Batches())
    return {"tokens_per_sec": (args.steps - args.warmup) * args.batch * args.seq / timer.elapsed,
            "peak_gb": peak_memory_gb(device), "last_loss": float(trainer.callback_metrics["train/loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each side (median reported)")
    parser.add_argument("--side", choices=["ours", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    big = args.shape != "tiny"
    args.batch = args.batch or 4
    args.seq = args.seq or (2048 if big else 256)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.bf16 = args.device == "cuda"
    args.gradient_checkpointing = big

    if args.side:
        print(json.dumps(run_ours(args) if args.side == "ours" else run_plain(args)))
        return

    runs: dict[str, list[dict]] = {"plain": [], "ours": []}
    for repeat in range(args.repeats):
        for side in (("plain", "ours") if repeat % 2 == 0 else ("ours", "plain")):
            command = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                sys.exit(f"{side} run failed:\n{done.stderr[-3000:]}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = lambda values: statistics.median(values)  # noqa: E731
    plain, ours = ({key: median([run[key] for run in runs[side]]) for key in runs[side][0]} for side in ("plain", "ours"))
    ratios = [o["tokens_per_sec"] / p["tokens_per_sec"] for o, p in zip(runs["ours"], runs["plain"])]
    print(f"LoRA r{args.rank} SFT, {args.shape} shape, batch {args.batch} x seq {args.seq}, {args.device}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', gradient checkpointing' if args.gradient_checkpointing else ''}, "
          f"{args.steps - args.warmup} timed steps, median of {args.repeats} interleaved repeats")
    print(f"| {'':<22} | {'tokens/s':>10} | {'peak memory (GB)':>16} | {'last loss':>9} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 18}|{'-' * 11}|")
    for name, row in (("plain PyTorch + PEFT", plain), ("lit-factory", ours)):
        print(f"| {name:<22} | {row['tokens_per_sec']:>10.0f} | {row['peak_gb']:>16.2f} | {row['last_loss']:>9.4f} |")
    print(f"| {'ratio ours / plain':<22} | {median(ratios):>10.3f} | "
          f"{ours['peak_gb'] / plain['peak_gb']:>16.3f} | {'':>9} |")
    print("tokens/s ratio of each repeat: " + ", ".join(f"{ratio:.3f}" for ratio in ratios))


if __name__ == "__main__":
    main()
