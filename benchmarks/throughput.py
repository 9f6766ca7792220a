"""Throughput, MFU and peak memory of LoRA SFT: lit-factory beside a plain transformers + PEFT loop and
``transformers.Trainer`` (same random model, batches, AdamW, learning rate; gradient checkpointing), plus lit-factory
with QLoRA 4-bit; or, with ``--packing``, lit-factory's SFT on alpaca_en_demo with and without packing.

    python benchmarks/throughput.py                 # GPU: Llama-2-7B shape, LoRA r16 all linear, 4 x 2048, bf16, GC
    python benchmarks/throughput.py                 # no GPU: the tiny shape, fp32, 4 x 256, GC (said in the header)
    python benchmarks/throughput.py --packing       # packed vs unpacked SFT on alpaca_en_demo (tiny shape on a CPU,
                                                    # the 7B shape with flash-attention 2 when installed on a GPU)

Each side runs in its own process (benchmarks/_sides.py), the sides interleaved, medians shown. MFU counts the
model FLOPs of a LoRA step per token, F = 4·N_frozen + 6·N_LoRA + 12·L·H·Q·T: PaLM's 6N + 12·L·H·Q·T (Chowdhery et
al. 2022, appendix B) with the frozen matmul weights' backward computing input gradients only (2N forward + 2N
backward instead of 2N + 4N); N counts the matmul weights (the output head included, the embedding lookup not);
gradient checkpointing's recomputation is not counted (MFU, not hardware FLOPs utilisation). The peak is
``--peak-tflops`` (740: the bf16 matmul peak measured on an H100, issue 13) on a GPU and a measured fp32 matmul
peak on a CPU. The table also checks that every side was fed the same batches and optimizer settings and really
recomputed its layers (decoder layer 0 runs twice per step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sides import (ROOT, SHAPES, TOKENIZER, add_run_arguments, medians, run_interleaved, run_ours,  # noqa: E402
                    run_plain, run_trainer, settle)

LORA_SIDES = {"plain": "plain PyTorch + PEFT", "trainer": "transformers.Trainer", "ours": "lit-factory",
              "ours-qlora": "lit-factory QLoRA 4-bit"}
PACKING_SIDES = {"unpacked": "lit-factory, padded rows", "packed": "lit-factory, packing"}
# Issue 13's figures: Llama-2-7B shape, LoRA r16, 4 x 2048, bf16, gradient checkpointing, H100 80GB, torch 2.11.
REFERENCE_TOKENS_PER_SEC = {"plain": 6192, "trainer": 7156}  # plain: at 18.24 GB peak
PEER_DATA = ROOT.parent / "shared" / "peer-data" / "llamafactory"


def lora_flops_per_token(shape: dict, rank: int, seq: int) -> tuple[float, int, int]:
    """Model FLOPs of one LoRA training token (the module doc's formula), the frozen matmul weights N_frozen and
    the LoRA weights N_LoRA of a Llama-shaped config with LoRA on every linear layer of the decoder."""
    d, ffn, layers, vocab = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = d // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = [(d, q), (d, kv), (d, kv), (q, d), (d, ffn), (d, ffn), (ffn, d)]  # q k v o gate up down
    frozen = layers * sum(i * o for i, o in linears) + d * vocab
    lora = layers * sum(rank * (i + o) for i, o in linears)
    return 4 * frozen + 6 * lora + 12 * layers * heads * head_dim * seq, frozen, lora


def reference(side: str) -> str:
    """Issue 13's figure for ``side`` with its MFU by this script's formula against 740 TFLOP/s."""
    if side not in REFERENCE_TOKENS_PER_SEC:
        return ""
    tokens = REFERENCE_TOKENS_PER_SEC[side]
    mfu = tokens * lora_flops_per_token(SHAPES["llama2-7b"], 16, 2048)[0] / 740e12
    return f"{tokens:,} tokens/s, MFU {100 * mfu:.1f}%" + (", 18.24 GB" if side == "plain" else "")


def cpu_matmul_peak_tflops(size: int = 1024, repeats: int = 20) -> float:
    """The best fp32 matmul rate of this process's threads (the peak a CPU run's MFU is taken against)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e12


def save_random_model(args, folder: str) -> None:
    """The shape's random model in bf16, saved once for the QLoRA side to quantize on load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(SHAPES[args.shape])
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options),
                                                 dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def qlora_skip_reason(args) -> str | None:
    if args.device != "cuda":
        return "skipped: bitsandbytes 4-bit QLoRA needs CUDA"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes is not installed (a dependency of lit-factory: pip install bitsandbytes)"
    return None


def packing_data(args, packing: bool):
    from lit_factory.data import DataModule

    return DataModule(args.dataset, dataset_dir=args.dataset_dir, tokenizer=TOKENIZER, template="chatml",
                      cutoff_len=args.cutoff_len, batch_size=args.batch, packing=packing, shuffle=False)


def run_side(args) -> dict:
    if args.side == "plain":
        return run_plain(args)
    if args.side == "trainer":
        return run_trainer(args)
    if args.side == "ours":
        return run_ours(args)
    if args.side == "ours-qlora":
        if not Path(args.model_dir, "config.json").is_file():
            save_random_model(args, args.model_dir)
        return run_ours(args, model_dir=args.model_dir)
    return run_ours(args, data=packing_data(args, packing=args.side == "packed"))


def row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}" for i, (cell, w) in
                             enumerate(zip(cells, widths))) + " |"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(row(header, widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in rows:
        print(row(cells, widths))


def setting(args) -> str:
    where = args.device if args.device == "cuda" else "CPU (a scaled-down shape: tiny Llama, not the 7B one)"
    checkpointing = "on" if args.gradient_checkpointing else "off"
    return (f"{args.shape} shape, LoRA r{args.rank} all linear, micro-batch {args.batch} x seq {args.seq}, "
            f"{'bf16' if args.bf16 else 'fp32'}, gradient checkpointing {checkpointing}, {where}; "
            f"{args.steps - args.warmup} timed steps after {args.warmup}, median of {args.repeats} interleaved repeats")


def report_lora(args, runs: dict[str, list[dict]], skipped: str | None) -> bool:
    """Print the LoRA table and the checks; False when a check fails."""
    flops, frozen, lora = lora_flops_per_token(SHAPES[args.shape], args.rank, args.seq)
    peak = args.peak_tflops or cpu_matmul_peak_tflops()
    print(f"LoRA SFT throughput: {setting(args)}")
    print(f"MFU = tokens/s x F / peak; F = 4·N_frozen + 6·N_LoRA + 12·L·H·Q·T = {flops / 1e9:.3f} GFLOP/token "
          f"(N_frozen {frozen / 1e6:,.1f} M, N_LoRA {lora / 1e6:,.2f} M); peak {peak:,.3f} TFLOP/s "
          f"({'--peak-tflops' if args.peak_tflops else 'measured fp32 matmul, this process'})")
    rows, summary = [], {side: medians(side_runs) for side, side_runs in runs.items()}
    for side, name in LORA_SIDES.items():
        if side not in summary:
            rows.append([name, skipped or "not run", "", "", "", "", reference(side)])
            continue
        s = summary[side]
        rows.append([name, f"{s['tokens_per_sec']:,.0f}", f"{100 * s['tokens_per_sec'] * flops / peak / 1e12:.1f}%",
                     f"{s['peak_gb']:.2f}", f"{s['last_loss']:.4f}", f"{s['layer0_calls_per_step']:g}",
                     reference(side)])
    print_table(["side", "tokens/s", "MFU", "peak memory (GB)", "last loss", "layer-0 runs/step",
                 "reference (H100 80GB, issue 13)"], rows)
    plain, ours = summary["plain"], summary["ours"]
    ratios = [o["tokens_per_sec"] / p["tokens_per_sec"] for o, p in zip(runs["ours"], runs["plain"])]
    print(f"ours / plain: tokens/s {statistics.median(ratios):.3f} (each repeat: "
          + ", ".join(f"{r:.3f}" for r in ratios) + f"; GPU target >= 1.5), peak memory "
          f"{ours['peak_gb'] / plain['peak_gb']:.3f} (GPU target <= 0.75); ours / Trainer: tokens/s "
          f"{ours['tokens_per_sec'] / summary['trainer']['tokens_per_sec']:.3f}")
    if "ours-qlora" in summary:
        print(f"QLoRA peak memory {summary['ours-qlora']['peak_gb']:.2f} GB (GPU target for the 7B shape: < 6 GB)")
    every = [run for side_runs in runs.values() for run in side_runs]
    checks = {
        "same batches (fingerprint of the token ids fed to the embeddings)": len({r["batches"] for r in every}) == 1,
        "same optimizer settings and trainable tensors": len({r["optimizer"] for r in every}) == 1,
        f"trainable weights = N_LoRA ({lora:,})": all(r["trainable"] == lora for r in every),
        "model.is_gradient_checkpointing on every side": all(r["is_gradient_checkpointing"] for r in every)
        if args.gradient_checkpointing else True,
        f"decoder layer 0 ran {2 if args.gradient_checkpointing else 1}x per step (recomputed in backward)":
            all(r["layer0_calls_per_step"] == (2 if args.gradient_checkpointing else 1) for r in every),
    }
    if not args.bf16:  # fp32: the same model, batches and optimizer train to the same loss
        losses = [summary[side]["last_loss"] for side in ("plain", "trainer", "ours")]
        checks["same last loss, fp32 (within 1e-4)"] = max(losses) - min(losses) <= 1e-4 * max(losses)
    print(f"optimizer: {every[0]['optimizer']}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    return all(checks.values())


def report_packing(args, runs: dict[str, list[dict]]) -> bool:
    print(f"Packing: LoRA SFT on {args.dataset} ({args.dataset_dir}), cutoff_len {args.cutoff_len}, "
          f"attention {args.attn}; {setting(args).replace(f'x seq {args.seq}', 'rows')}")
    summary = {side: medians(side_runs) for side, side_runs in runs.items()}
    rows = [[name, f"{summary[side]['tokens_per_sec']:,.0f}", f"{summary[side]['supervised_tokens_per_sec']:,.0f}",
             f"{summary[side]['peak_gb']:.2f}", f"{summary[side]['layer0_calls_per_step']:g}"]
            for side, name in PACKING_SIDES.items()]
    print_table(["side", "non-pad tokens/s", "supervised tokens/s", "peak memory (GB)", "layer-0 runs/step"], rows)
    for key, what in (("tokens_per_sec", "non-pad"), ("supervised_tokens_per_sec", "supervised")):
        ratios = [p[key] / u[key] for p, u in zip(runs["packed"], runs["unpacked"])]
        print(f"packed / unpacked, {what} tokens/s: {statistics.median(ratios):.3f} (each repeat: "
              + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    every = [run for side_runs in runs.values() for run in side_runs]
    ok = all(r["layer0_calls_per_step"] == (2 if args.gradient_checkpointing else 1) for r in every)
    print(f"  [{'ok' if ok else 'FAILED'}] decoder layer 0 ran as gradient checkpointing says on every side")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, sides=[*LORA_SIDES, *PACKING_SIDES])
    parser.set_defaults(shape=None, repeats=3)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak matmul TFLOP/s for MFU (default: 740 on a GPU, bf16 H100/H200-class; measured "
                             "fp32 matmul on a CPU)")
    parser.add_argument("--packing", action="store_true", help="packed vs unpacked SFT on --dataset instead")
    parser.add_argument("--dataset", default="alpaca_en_demo")
    parser.add_argument("--dataset-dir", default=str(PEER_DATA), help="LLaMA-Factory's data/ folder")
    parser.add_argument("--cutoff-len", type=int, default=None, help="--packing: default 2048 (1024 on a CPU)")
    parser.add_argument("--attn", default=None, help="attention implementation (default: flash_attention_2 on a "
                                                     "GPU with flash-attn installed, else sdpa)")
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = settle(parser.parse_args(), gradient_checkpointing=True)
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = 740.0
    if args.attn is None:
        flash = args.device == "cuda" and importlib.util.find_spec("flash_attn") is not None
        args.attn = "flash_attention_2" if flash else "sdpa"
    args.cutoff_len = args.cutoff_len or (2048 if args.device == "cuda" else 1024)

    if args.side:
        print(json.dumps(run_side(args)))
        return
    if args.packing and not Path(args.dataset_dir, "dataset_info.json").is_file():
        sys.exit(f"--dataset-dir {args.dataset_dir}: no dataset_info.json there; give LLaMA-Factory's data/ folder")
    argv = sys.argv[1:] + ["--device", args.device, "--shape", args.shape]
    if args.packing:
        ok = report_packing(args, run_interleaved(__file__, argv, list(PACKING_SIDES), args.repeats))
    else:
        skipped = qlora_skip_reason(args)
        sides = [side for side in LORA_SIDES if side != "ours-qlora" or skipped is None]
        with tempfile.TemporaryDirectory() as model_dir:
            runs = run_interleaved(__file__, argv + ["--model-dir", model_dir], sides, args.repeats)
        ok = report_lora(args, runs, skipped)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
