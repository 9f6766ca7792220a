"""LoRA linear layer, forward + backward: PEFT's modules vs lit-factory's fused autograd function.

    python benchmarks/lora_backward.py [--tokens 4096] [--hidden 4096] [--rank 8] [--repeats 20] [--device cpu]

Prints milliseconds per forward+backward for each and the speed-up. Both compute the same gradients
(tests/model/test_lora_fast.py checks them to 1e-5).
"""

from __future__ import annotations

import argparse
import time

import torch


def time_step(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    for _ in range(3):  # warm-up
        module(x).sum().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        module(x).sum().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--out", type=int, default=None, help="output features (default: hidden)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from lit_factory.model.lora_fast import use_fast_lora

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    print(f"device={device} dtype={args.dtype} tokens={args.tokens} in={args.hidden} out={args.out or args.hidden}")
    print(f"{'rank':>5} {'PEFT ms':>10} {'fused ms':>10} {'speed-up':>9}")
    for rank in args.ranks:
        times = []
        for fused in (False, True):
            torch.manual_seed(0)
            base = torch.nn.Sequential(torch.nn.Linear(args.hidden, args.out or args.hidden, bias=False))
            model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["0"]))
            model = model.to(device=device, dtype=dtype).train()
            if fused:
                use_fast_lora(model)
            x = torch.randn(args.tokens, args.hidden, device=device, dtype=dtype, requires_grad=True)
            times.append(time_step(model, x, args.repeats))
        print(f"{rank:>5} {times[0]:>10.2f} {times[1]:>10.2f} {times[0] / times[1]:>8.2f}x")


if __name__ == "__main__":
    main()
