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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sides import add_run_arguments, medians, run_interleaved, run_ours, run_plain, settle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, sides=["ours", "plain"])
    args = settle(parser.parse_args())

    if args.side:
        print(json.dumps(run_ours(args) if args.side == "ours" else run_plain(args)))
        return

    runs = run_interleaved(__file__, [*sys.argv[1:], "--device", args.device], ["plain", "ours"], args.repeats)
    plain, ours = medians(runs["plain"]), medians(runs["ours"])
    ratios = [o["tokens_per_sec"] / p["tokens_per_sec"] for o, p in zip(runs["ours"], runs["plain"])]
    print(f"LoRA r{args.rank} SFT, {args.shape} shape, batch {args.batch} x seq {args.seq}, {args.device}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', gradient checkpointing' if args.gradient_checkpointing else ''}, "
          f"{args.steps - args.warmup} timed steps, median of {args.repeats} interleaved repeats")
    print(f"| {'':<22} | {'tokens/s':>10} | {'peak memory (GB)':>16} | {'last loss':>9} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 18}|{'-' * 11}|")
    for name, row in (("plain PyTorch + PEFT", plain), ("lit-factory", ours)):
        print(f"| {name:<22} | {row['tokens_per_sec']:>10.0f} | {row['peak_gb']:>16.2f} | {row['last_loss']:>9.4f} |")
    print(f"| {'ratio ours / plain':<22} | {statistics.median(ratios):>10.3f} | "
          f"{ours['peak_gb'] / plain['peak_gb']:>16.3f} | {'':>9} |")
    print("tokens/s ratio of each repeat: " + ", ".join(f"{ratio:.3f}" for ratio in ratios))


if __name__ == "__main__":
    main()
