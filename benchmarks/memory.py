"""Memory and throughput of the fine-tuning methods, in the manner of Table 4 of the LLaMA-Factory paper.

    python benchmarks/memory.py --size 7b --seq-len 2048          # on a GPU: the paper's setting (Llama-2-7B shape)
    python benchmarks/memory.py --size tiny --seq-len 256 --steps 3  # on a CPU: a quick look

A random Llama-shaped model of the chosen size is saved once; each method then trains it for a few steps on random
tokens (batch 1) in its own process, so peak memory is that method's alone: CUDA's max_memory_allocated on a GPU,
the process's peak resident set on a CPU. Weights are bfloat16 on a GPU (float32 on a CPU), trainable parameters
float32, AdamW states as the method keeps them, gradient checkpointing on (as in the paper).
Prints one table row per method: trainable parameters, peak memory (GB), tokens/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # Llama-2 shapes (hidden, intermediate, layers, heads) and small ones for CPUs
    "7b": (4096, 11008, 32, 32),
    "1b": (2048, 5632, 22, 32),
    "small": (512, 1376, 8, 8),
    "tiny": (256, 688, 4, 4),
}
METHODS = ["full", "freeze", "galore", "lora", "qlora"]
SPARROW = str(Path(__file__).resolve().parents[1] / "lit_factory" / "assets" / "sparrow-tokenizer")


def save_random_model(size: str, directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads = SIZES[size]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000,
                         max_position_embeddings=4096)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    LlamaForCausalLM(config).to(dtype).save_pretrained(directory)
    AutoTokenizer.from_pretrained(SPARROW).save_pretrained(directory)


def run_method(method: str, model_dir: str, seq_len: int, steps: int) -> dict:
    """Train ``method`` for ``steps`` steps and measure it (runs in a worker process)."""
    import resource

    import torch

    from lit_factory.model import Freeze, LoRA, ModelArgs, build_model, build_tokenizer
    from lit_factory.model.quantization import BitsAndBytes
    from lit_factory.optim import GaLore, build_optimizer

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args = ModelArgs(path=model_dir, dtype="bfloat16" if cuda else "float32", gradient_checkpointing=True,
                     quantization=BitsAndBytes() if method == "qlora" else None)
    finetuning = {"full": None, "freeze": Freeze(trainable_layers=2), "galore": None,
                  "lora": LoRA(r=8, alpha=16), "qlora": LoRA(r=8, alpha=16)}[method]
    model = build_model(args, build_tokenizer(args), finetuning, device)
    if method != "qlora":
        model = model.to(device)
    optimizer = build_optimizer(GaLore(lr=1e-5, rank=128, update_interval=200, scale=2.0) if method == "galore"
                                else (lambda params: torch.optim.AdamW(params, lr=1e-5)), model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    model.train()
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step > 0:  # step 0 warms up kernels and allocates optimizer states
            elapsed += time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    return {"method": method, "trainable": trainable, "peak_gb": peak, "tokens_per_s": steps * seq_len / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_method(args.worker, args.model_dir, args.seq_len, args.steps)))
        return

    with tempfile.TemporaryDirectory() as directory:
        save_random_model(args.size, Path(directory))
        hidden, _, layers, _ = SIZES[args.size]
        print(f"model: Llama-shaped {args.size} (hidden {hidden}, {layers} layers), batch 1 x {args.seq_len} tokens,"
              f" {args.steps} timed steps")
        print(f"{'method':<8} {'trainable params':>17} {'peak memory GB':>15} {'tokens/s':>10}")
        for method in args.methods:
            result = subprocess.run(
                [sys.executable, __file__, "--worker", method, "--model-dir", directory,
                 "--seq-len", str(args.seq_len), "--steps", str(args.steps)], capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{method:<8} failed: {result.stderr.strip().splitlines()[-1]}")
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{method:<8} {row['trainable']:>17,} {row['peak_gb']:>15.2f} {row['tokens_per_s']:>10.1f}")


if __name__ == "__main__":
    main()
