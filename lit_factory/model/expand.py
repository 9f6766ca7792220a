"""LLaMA Pro block expansion (Wu et al., 2024): `lit-factory expand` copies every k-th decoder block and zeroes
the copy's output projections, so the expanded model computes exactly what the original did; fine-tuning then
trains only the new blocks (``finetuning: lit_factory.model.LlamaPro``)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Optional

from lit_factory.errors import LitFactoryError

#: Linear layers that write into the residual stream; zeroing them makes a block the identity.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")


def expanded_layer_indices(num_layers: int, num_expanded: int) -> list[int]:
    """Indices of the inserted blocks in a model of ``num_layers`` layers after ``expand_model(num_expand=N)``."""
    original = num_layers - num_expanded
    if num_expanded < 1 or original < num_expanded or original % num_expanded:
        raise LitFactoryError(
            f"model.init_args.finetuning.init_args.num_expanded_blocks: {num_expanded} does not fit a model of "
            f"{num_layers} layers expanded by lit-factory expand. Fix: give the --num-expand the model was "
            "expanded with."
        )
    stride = original // num_expanded + 1
    return [stride * k - 1 for k in range(1, num_expanded + 1)]


def expand_model(model_path: str, output: str, num_expand: int, trust_remote_code: bool = False) -> Path:
    """Insert ``num_expand`` identity-initialised blocks, one after every ``L / num_expand`` original blocks,
    and save model + tokenizer to ``output`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_factory.io import write_folder_atomically
    from lit_factory.model.layers import decoder_layers

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    _, layers = decoder_layers(model)
    count = len(layers)
    if num_expand < 1 or count % num_expand:
        raise LitFactoryError(
            f"--num-expand: {num_expand} does not divide the model's {count} layers. Fix: give a divisor, e.g. "
            f"{count // 2 or 1}."
        )
    stride = count // num_expand
    new_layers, layer_types = [], []
    old_types = getattr(model.config, "layer_types", None)
    for index, layer in enumerate(layers):
        new_layers.append(layer)
        layer_types.append(old_types[index] if old_types else None)
        if (index + 1) % stride == 0:
            block = copy.deepcopy(layer)
            zeroed = [m for n, m in block.named_modules() if n.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS]
            if len(zeroed) < 2:
                raise LitFactoryError(
                    f"--model: cannot find {OUTPUT_PROJECTIONS} in the blocks of {type(model).__name__}. Fix: expand a "
                    "decoder whose blocks have them (Llama, Qwen, Mistral...)."
                )
            with torch.no_grad():
                for module in zeroed:
                    module.weight.zero_()
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
            new_layers.append(block)
            layer_types.append(old_types[index] if old_types else None)
    del layers[:]  # refill the ModuleList in place: the model keeps referring to this container
    layers.extend(new_layers)
    for index, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # the KV cache is indexed by it
                module.layer_idx = index
    model.config.num_hidden_layers = len(new_layers)
    if old_types:
        model.config.layer_types = layer_types

    def save(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return write_folder_atomically(Path(output), save)


def main(argv: Optional[list[str]] = None) -> int:
    """`lit-factory expand --model PATH --output DIR --num-expand N`."""
    parser = argparse.ArgumentParser(prog="lit-factory expand", description=__doc__)
    parser.add_argument("--model", required=True, help="directory of the model to expand")
    parser.add_argument("--output", required=True, help="new directory for the expanded model")
    parser.add_argument("--num-expand", type=int, required=True, help="how many blocks to add (divides the layers)")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    saved = expand_model(args.model, args.output, args.num_expand, args.trust_remote_code)
    print(f"Saved the expanded model to {saved}; train it with finetuning: lit_factory.model.LlamaPro "
          f"(num_expanded_blocks: {args.num_expand})")
    return 0
