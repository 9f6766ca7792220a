"""LLaMA-Factory's command line on ours: its verbs (``train``, ``webui``, ``api``, ``chat``, ``export``, ``env``,
``version``) and its YAMLs (``lit-factory fit --config LF.yaml``) become our subcommands and recipes; ``lit-factory
convert LF.yaml -o recipe.yaml`` writes the recipe for good.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from lit_factory.compat.llamafactory import Translation, read_llamafactory_file, translate
from lit_factory.errors import LitFactoryError
from lit_factory.io import write_text_atomically

# LLaMA-Factory verb -> our subcommand (`eval` keeps its name: ours is the same MMLU-style benchmark).
VERBS = {"train": "fit", "webui": "board", "api": "serve", "chat": "chat", "export": "export", "eval": "eval"}
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def llamafactory_args(args: list[str]) -> Union[list[str], int]:
    """Our arguments for a command line that may be LLaMA-Factory's; an exit status when it ran here (``env``)."""
    if not args:
        return args
    verb, rest = args[0], args[1:]
    if verb == "version":
        return ["--version"]
    if verb == "env":
        return env_main(rest)
    if verb == "train":
        if not rest or not rest[0].endswith((".yaml", ".yml", ".json")):
            raise LitFactoryError("train: give a LLaMA-Factory YAML: lit-factory train examples/train_lora/X.yaml")
        return _trainer_args("fit", ["--config", rest[0], *rest[1:]])
    if verb in TRAINER_SUBCOMMANDS:
        return _trainer_args(verb, rest)
    if verb == "webui":
        return ["board", *rest]
    if verb in VERBS and rest and rest[0].endswith((".yaml", ".yml")):
        config = read_llamafactory_file(rest[0], _overrides(rest[1:]))
        if config is None:
            return args
        translation = _translated(config, rest[0])
        expected = "export" if verb == "export" else "chat"
        if translation.kind != expected:
            raise LitFactoryError(f"{rest[0]}: a {translation.kind} file, not a {expected} file; run it with "
                                  f"`lit-factory {translation.kind} {rest[0]}`")
        command = [VERBS[verb], *translation.command[1:]]
        if verb == "api":
            command += translation.serve_options
        return command + [a for a in rest[1:] if a.startswith("-")]
    return args


def _overrides(args: list[str]) -> list[str]:
    """LLaMA-Factory's ``key=value`` words: an identifier before ``=``, and not the value of a preceding option
    (``--ckpt_path runs/epoch=0-step=4.ckpt``)."""
    return [arg for i, arg in enumerate(args) if re.match(r"[a-z_][a-z0-9_]*=", arg)
            and not (i > 0 and args[i - 1].startswith("-") and "=" not in args[i - 1])]


def _trainer_args(subcommand: str, rest: list[str]) -> list[str]:
    """Swap each LLaMA-Factory ``--config`` for its translated recipe; ``key=value`` words override its keys."""
    overrides = _overrides(rest)
    out, i, translated = [subcommand], 0, False
    while i < len(rest):
        arg = rest[i]
        value = rest[i + 1] if arg in ("-c", "--config") and i + 1 < len(rest) else None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is not None and Path(value).is_file():
            config = read_llamafactory_file(value, overrides)
            if config is not None:
                out += ["--config", write_temporary_recipe(_translated(config, value))]
                translated = True
                i += 1 if arg.startswith("--config=") else 2
                continue
        if arg not in overrides:
            out.append(arg)
        i += 1
    if overrides and not translated:
        raise LitFactoryError(f"{overrides[0]}: key=value overrides apply to a LLaMA-Factory YAML; this run has none")
    return out


def _translated(config: dict, source: str) -> Translation:
    translation = translate(config, source)
    for warning in translation.warnings:
        print(f"lit-factory: warning: {source}: {warning}", file=sys.stderr)
    return translation


def write_temporary_recipe(translation: Translation) -> str:
    """The translated recipe in a new temporary file (LightningCLI reads recipes from files)."""
    handle, path = tempfile.mkstemp(prefix="lit-factory-recipe-", suffix=".yaml")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(render_recipe(translation))
    atexit.register(Path(path).unlink, missing_ok=True)  # the run keeps its resolved config in output_dir
    return path


def render_recipe(translation: Translation) -> str:
    """The recipe as commented YAML: where it came from, where each LLaMA-Factory key went, what had no effect."""
    import yaml

    lines = [f"# lit-factory recipe translated from the LLaMA-Factory file {translation.source}",
             "#   lit-factory fit --config this.yaml",
             "# Keys absent from that file take LLaMA-Factory's (and transformers') defaults, written out here.",
             "# Where each LLaMA-Factory key went:"]
    width = max((len(key) for key, _ in translation.mapped), default=0)
    lines += [f"#   {key:<{width}} -> {target}" for key, target in translation.mapped]
    if translation.warnings:
        lines.append("# Notes:")
        lines += [f"#   {' '.join(warning.split())}" for warning in translation.warnings]
    body = yaml.safe_dump(translation.recipe, sort_keys=False, default_flow_style=None, width=118)
    return "\n".join(lines) + "\n" + body


def convert_main(argv: Optional[list[str]] = None) -> int:
    """``lit-factory convert LF.yaml [-o recipe.yaml] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="lit-factory convert", description=__doc__)
    parser.add_argument("config", help="a LLaMA-Factory YAML (training, merge_lora or inference file)")
    parser.add_argument("overrides", nargs="*", help="key=value pairs that override the file's keys")
    parser.add_argument("-o", "--output", help="new recipe file to write (default: print to stdout)")
    options = parser.parse_args(argv)
    if not Path(options.config).is_file():
        raise LitFactoryError(f"convert: no such file {options.config!r}; give a LLaMA-Factory YAML")
    config = read_llamafactory_file(options.config, options.overrides)
    if config is None:
        raise LitFactoryError(f"{options.config}: not a LLaMA-Factory file (no top-level model_name_or_path)")
    translation = _translated(config, options.config)
    if translation.kind != "train":  # merge and inference files are commands here, not recipes
        print("lit-factory " + " ".join(translation.command))
        return 0
    text = render_recipe(translation)
    if options.output is None:
        print(text, end="")
        return 0
    output = Path(options.output)
    if output.exists():
        raise LitFactoryError(f"convert -o {output}: the file exists; choose a new path (it is never overwritten)")
    write_text_atomically(output, text)
    print(f"Wrote {output}: lit-factory fit --config {output}")
    return 0


def env_main(argv: Optional[list[str]] = None) -> int:
    """``lit-factory env``: versions of lit-factory, Python and the libraries a bug report needs."""
    import platform
    from importlib import metadata

    from lit_factory import __version__

    rows = [("lit-factory", __version__), ("Platform", platform.platform()), ("Python", platform.python_version())]
    for package in ("torch", "lightning", "transformers", "datasets", "peft", "trl", "accelerate", "deepspeed",
                    "bitsandbytes", "vllm", "gradio"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    try:
        import torch

        rows.append(("CUDA", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"))
    except ImportError:
        pass
    print("\n".join(f"- {name}: {value}" for name, value in rows))
    return 0
