"""Preprocessing throughput: 20,000 alpaca-style examples aligned, templated and tokenised (Qwen2.5 tokenizer,
qwen template, cutoff 1024) with 2 worker processes, in samples/s; beside the same work by LLaMA-Factory's
``get_dataset`` when it is installed (give its interpreter with --llamafactory-python, e.g. a separate venv with
``pip install llamafactory``). Target: at least as fast. Each side runs in its own process on a cold cache.

    python benchmarks/data.py [--examples 20000] [--workers 2] [--llamafactory-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "qwen2.5-instruct"
DEMO = SHARED / "peer-data" / "llamafactory" / "alpaca_en_demo.json"

OURS = """
import sys, time
from lit_factory.data.datamodule import DataModule
folder, tokenizer, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = DataModule("bench", dataset_dir=folder, tokenizer=tokenizer, template="qwen", cutoff_len=1024,
                    preprocessing_num_workers=workers)
module.tokenizer  # loading the tokenizer is not preprocessing
start = time.perf_counter()
module.setup()
print(len(module.train_set), time.perf_counter() - start)
"""

LLAMAFACTORY = """
import sys, time
from llamafactory.hparams import get_train_args
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.model import load_tokenizer
folder, tokenizer, workers, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model_args, data_args, training_args, _, _ = get_train_args(dict(
    stage="sft", do_train=True, model_name_or_path=tokenizer, dataset="bench", dataset_dir=folder, template="qwen",
    cutoff_len=1024, preprocessing_num_workers=workers, output_dir=out, overwrite_cache=True, finetuning_type="lora",
    report_to="none"))
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
start = time.perf_counter()
data = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
print(len(data["train_dataset"]), time.perf_counter() - start)
"""


def make_data(folder: Path, examples: int) -> None:
    rows = json.loads(DEMO.read_text())
    # Distinct rows (a cache must not make repeats free): the demo rows with a numbered instruction.
    data = [{**rows[i % len(rows)], "instruction": f"{i}. {rows[i % len(rows)]['instruction']}"} for i in range(examples)]
    (folder / "bench.json").write_text(json.dumps(data))
    (folder / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))


def run(python: str, script: str, folder: Path, workers: int, cache: Path) -> tuple[int, float]:
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([python, "-c", script, str(folder), str(TOKENIZER), str(workers), str(cache / "out")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    count, seconds = out.stdout.strip().splitlines()[-1].split()
    return int(count), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--llamafactory-python", help="python of an environment with llamafactory installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, args.examples)
        rows = [("lit-factory", *run(sys.executable, OURS, folder, args.workers, folder / "cache-ours"))]
        if args.llamafactory_python:
            rows.append(("LLaMA-Factory", *run(args.llamafactory_python, LLAMAFACTORY, folder, args.workers,
                                               folder / "cache-lf")))
    print(f"{args.examples} alpaca examples, qwen template, cutoff 1024, {args.workers} workers")
    print(f"{'':<14} {'examples':>9} {'seconds':>8} {'samples/s':>10}")
    for name, count, seconds in rows:
        print(f"{name:<14} {count:>9} {seconds:>8.1f} {args.examples / seconds:>10.0f}")
    if not args.llamafactory_python:
        print("LLaMA-Factory: not measured (give --llamafactory-python of a venv with `pip install llamafactory`)")


if __name__ == "__main__":
    main()
