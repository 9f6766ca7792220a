"""`lit-factory export`: merge a LoRA adapter into its base model and write sharded safetensors + tokenizer."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable, Optional

from lit_factory.errors import LitFactoryError
from lit_factory.io import write_folder_atomically


def write_atomically(output: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging_dir)`` in a temporary folder beside ``output`` and move it into place only when done,
    so an interrupted export never leaves a half-written model where a reader would load it."""
    if output.exists() and any(output.iterdir()):
        raise LitFactoryError(f"--output: {str(output)!r} exists and is not empty. Fix: choose a new folder.")
    return write_folder_atomically(output, write)


def export_model(
    model_path: str,
    output: str,
    adapter: Optional[str] = None,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    trust_remote_code: bool = False,
) -> Path:
    """Load ``model_path`` (+ ``adapter``, merged into the weights) in ``dtype`` and save it with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lit_factory.model.quantization import prequantized_method

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if adapter is not None and prequantized_method(config) is not None:
        raise LitFactoryError(
            "--model: cannot merge an adapter into quantized weights. Fix: export from the unquantized model."
        )
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise LitFactoryError(
            f"--adapter: {adapter!r} has no adapter_config.json. Fix: give a folder saved by a LoRA run."
        )
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    # Merge in float32: adding B@A to half-precision weights in half precision loses the small updates.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    # The run directory holds the tokenizer the adapter was trained with (it may have added tokens).
    tokenizer_source = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter saved the trained rows
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = config.dtype if torch_dtype == "auto" else torch_dtype
    if isinstance(target, str):
        target = getattr(torch, target)
    model = model.to(target or torch.float32)
    model.config.use_cache = True

    def save(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)

    return write_atomically(Path(output), save)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users get the error on one line (status 2) like every other command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LitFactoryError(f"{self.prog}: {message}. Fix: see {self.prog} --help.")


# A hub id is "name" or "namespace/name"; anything else that is not a folder cannot be a model.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SHARD_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for arguments that would fail deep inside transformers (after the model is loaded)."""
    for flag, value in (("--model", args.model), ("--adapter", args.adapter)):
        if value is None or Path(value).is_dir():
            continue
        if flag == "--adapter" or Path(value).exists() or not _HUB_ID.match(value) or value.startswith((".", "/")):
            raise LitFactoryError(f"{flag}: {value!r} is not a model folder. Fix: give the folder of a saved model "
                                  "(or a hub id like Qwen/Qwen2.5-0.5B for --model).")
    if not _SHARD_SIZE.match(args.max_shard_size):
        raise LitFactoryError(f"--max-shard-size {args.max_shard_size!r}: not a size. Fix: give a size like 2GB, "
                              "500MB or a number of bytes.")


def main(argv: Optional[list[str]] = None) -> int:
    """`lit-factory export --model PATH [--adapter DIR] --output DIR [--dtype bfloat16] [--max-shard-size 2GB]`."""
    parser = OneLineArgumentParser(prog="lit-factory export", description=__doc__)
    parser.add_argument("--model", required=True, help="base model directory or hub id")
    parser.add_argument("--adapter", help="LoRA adapter folder (a lit-factory run directory) to merge in")
    parser.add_argument("--output", required=True, help="new directory for the exported model")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weight dtype of the export (auto: the base model's)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard, e.g. 2GB or 500MB")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python code shipped with the model (its own modeling/tokenizer files). This is "
                        "the only option of lit-factory export that runs model code; without it, only weights and "
                        "configs are read. Use it only for a model whose code you trust.")
    args = parser.parse_args(argv)
    check_arguments(args)
    saved = export_model(args.model, args.output, args.adapter, args.dtype, args.max_shard_size, args.trust_remote_code)
    print(f"Exported the {'merged ' if args.adapter else ''}model and tokenizer to {saved}")
    return 0
