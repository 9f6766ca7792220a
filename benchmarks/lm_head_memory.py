"""Peak memory and speed of the SFT loss + backward with each loss head, at a large vocabulary.

    python benchmarks/lm_head_memory.py                          # Qwen vocabulary, batch 4 x 1024 tokens, on CPU
    python benchmarks/lm_head_memory.py --labelled 0.5 --rounds 1   # half the tokens carry a label (SFT prompts)

A tiny Qwen2-shaped model (hidden 64, 2 layers) with the vocabulary of ../shared/tokenizers/qwen2.5-instruct is
built from config; each variant then runs the SFT stage's ``loss(batch)`` and ``backward()`` on random tokens for a
warm-up step and ``--steps`` timed steps, in a fresh process of its own (so its peak resident set is its own), the
variants interleaved over ``--rounds`` rounds (other work on the machine then slows both alike).

- ``full``: ``lit_factory.stages.lm_head.FullLogits``, the plain path (the model's float32 logits for every position,
  then cross-entropy) — what the stages did before ``ChunkedLogits``.
- ``chunked``: ``ChunkedLogits`` (the default): labelled positions only, ``--chunk-tokens`` at a time.

Prints one row per run: peak RSS (ru_maxrss), the RSS before the first loss (model and libraries), the difference
(what the loss and backward add), wall-clock and CPU seconds per step (CPU time is the steadier figure on a
shared machine); then the median ratios chunked / full.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN_TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "qwen2.5-instruct"
VARIANTS = ("full", "chunked")


def rss_gib() -> float:
    with open("/proc/self/status") as status:  # current resident set (ru_maxrss is only the peak)
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 2**20


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """One variant's loss + backward steps (runs in a worker process)."""
    import resource

    import torch

    from lit_factory.model import ModelArgs
    from lit_factory.stages import SFT
    from lit_factory.stages.lm_head import ChunkedLogits, FullLogits

    torch.manual_seed(0)
    config = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq_len,
                  vocab_size=args.vocab)
    head = FullLogits() if variant == "full" else ChunkedLogits(chunk_tokens=args.chunk_tokens)
    stage = SFT(ModelArgs(config=config, tokenizer=str(QWEN_TOKENIZER)), loss_head=head)
    stage.configure_model()
    stage.model.train()
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq_len))
    labels = input_ids.clone()
    labels[:, : int(args.seq_len * (1 - args.labelled))] = -100  # the prompt part of each row carries no loss
    batch = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
    before = rss_gib()
    times, cpu_times = [], []
    for _ in range(args.steps + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        stage.loss(batch).backward()
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
        stage.model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    return {"variant": variant, "peak_gib": peak, "before_gib": before, "seconds": statistics.median(times[1:]),
            "cpu_seconds": statistics.median(cpu_times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=None, help="default: len() of the Qwen2.5 tokenizer")
    parser.add_argument("--labelled", type=float, default=1.0, help="fraction of each row that carries a label")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vocab is None:
        from transformers import AutoTokenizer

        args.vocab = len(AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER)))
    if args.worker:
        print(json.dumps(run_variant(args.worker, args)))
        return

    print(f"tiny Qwen2 (hidden 64, 2 layers), vocabulary {args.vocab:,}, batch {args.batch} x {args.seq_len} tokens, "
          f"{args.labelled:.0%} labelled, chunks of {args.chunk_tokens}; SFT loss + backward, median of {args.steps}")
    print(f"{'round':>5} {'variant':<8} {'peak RSS GiB':>13} {'before GiB':>11} {'added GiB':>10} {'s/step':>8} {'CPU s/step':>11}")
    rows: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    worker_args = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--vocab", str(args.vocab),
                   "--labelled", str(args.labelled), "--chunk-tokens", str(args.chunk_tokens), "--steps", str(args.steps)]
    for round_ in range(1, args.rounds + 1):
        for variant in VARIANTS:
            result = subprocess.run([sys.executable, __file__, "--worker", variant, *worker_args],
                                    capture_output=True, text=True, cwd=ROOT)
            if result.returncode != 0:
                print(f"{round_:>5} {variant:<8} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows[variant].append(row)
            print(f"{round_:>5} {variant:<8} {row['peak_gib']:>13.2f} {row['before_gib']:>11.2f} "
                  f"{row['peak_gib'] - row['before_gib']:>10.2f} {row['seconds']:>8.2f} {row['cpu_seconds']:>11.2f}", flush=True)
    if all(rows.values()):
        def median(variant: str, key) -> float:
            return statistics.median(key(row) for row in rows[variant])

        for label, key in [("peak RSS", lambda r: r["peak_gib"]), ("added RSS", lambda r: r["peak_gib"] - r["before_gib"]),
                           ("time per step", lambda r: r["seconds"]), ("CPU time per step", lambda r: r["cpu_seconds"])]:
            print(f"chunked / full, {label}: {median('chunked', key) / median('full', key):.2f}")


if __name__ == "__main__":
    main()
