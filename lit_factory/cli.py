"""`lit-factory` entry point.

Answers `--help`, unknown subcommands and missing config files before importing anything heavy; the training
subcommands then run through LightningCLI (see `lit_factory.lightning_cli`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from lit_factory import __version__
from lit_factory.errors import LitFactoryError, fail
from lit_factory.recipe import recipe_problem

TRAINER_SUBCOMMANDS = {
    "fit": "train a stage on a recipe: lit-factory fit --config recipes/quickstart.yaml",
    "validate": "run the validation loop of a recipe",
    "test": "run the test loop of a recipe",
    "predict": "run the predict loop of a recipe",
}

# Subcommands outside LightningCLI: name -> ("module:function", help). The function takes the remaining arguments,
# parses them itself (argparse or jsonargparse) and returns an exit status; it is imported only when called.
TOOL_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("lit_factory.infer.chat:main", "chat with a model in the terminal: lit-factory chat --model PATH"),
    "eval": ("lit_factory.eval.choice:main", "multiple-choice benchmark (MMLU style): lit-factory eval --model PATH"),
    "serve": ("lit_factory.infer.serve:main", "OpenAI-compatible HTTP API: lit-factory serve --model PATH"),
    "export": ("lit_factory.model.export:main", "merge a LoRA adapter, write safetensors: lit-factory export --model PATH --adapter DIR --output DIR"),
    "expand": ("lit_factory.model.expand:main", "LLaMA Pro block expansion: lit-factory expand --model PATH --output DIR --num-expand N"),
    "board": ("lit_factory.board.app:main", "web UI to configure, run and watch fine-tuning: lit-factory board"),
    "data": ("lit_factory.data.preview:main", "preview a recipe's data: statistics and samples with the loss marked: lit-factory data --config RECIPE"),
    "recipes": ("lit_factory.shipped:main", "list, show or copy the shipped recipes: lit-factory recipes copy sft/lora.yaml"),
    "convert": ("lit_factory.compat.commands:convert_main", "LLaMA-Factory YAML -> recipe: lit-factory convert LF.yaml -o recipe.yaml"),
    "env": ("lit_factory.compat.commands:env_main", "versions of lit-factory and its libraries, for bug reports"),
}

HELP = f"""usage: lit-factory <subcommand> [--config RECIPE.yaml] [--section.key VALUE ...]

lit-factory {__version__}: efficient fine-tuning of large language models with PyTorch Lightning.

subcommands:
{chr(10).join(f"  {name:<10} {text}" for name, text in TRAINER_SUBCOMMANDS.items())}
{chr(10).join(f"  {name:<10} {text}" for name, (_, text) in TOOL_SUBCOMMANDS.items())}

LLaMA-Factory YAMLs run unchanged: lit-factory train LF.yaml (or fit --config LF.yaml); its verbs webui, api, chat,
export, env and version work too.

fit, validate, test and predict take LightningCLI options: --config (repeatable), dotted overrides such as
--trainer.max_steps 5, --print_config. `lit-factory fit --help` lists every option of a recipe.
chat, serve, eval and export take --config RECIPE too (a recipe, or the config.yaml a run saved beside its model):
the model, adapter, template and generation settings come from it; options on the command line win.
`lit-factory SUBCOMMAND --help` lists a subcommand's own options.
"""

# Tool subcommands whose model options may come from a recipe (`--config`, see lit_factory.infer.recipe_options).
RECIPE_TOOL_SUBCOMMANDS = ("chat", "serve", "eval", "export")


def _from_llamafactory(args: list[str]) -> "list[str] | int":
    """LLaMA-Factory's verbs (train, webui, api ...) and YAMLs become ours (see ``lit_factory.compat``)."""
    from lit_factory.compat.commands import llamafactory_args

    try:
        return llamafactory_args(args)
    except LitFactoryError as err:
        return fail(str(err))


def _config_paths(args: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _shipped_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config recipes/...`` that does not exist here pointing at the shipped recipe, so the
    README's commands run from any folder once the package is installed."""
    from lit_factory.shipped import resolve_shipped_path

    resolved = list(args)
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            resolved[i + 1] = resolve_shipped_path(args[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + resolve_shipped_path(arg.split("=", 1)[1])
    return resolved
def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    translated = _from_llamafactory(args)
    if isinstance(translated, int):
        return translated
    if translated != args:  # the trainer must then read these arguments, not sys.argv
        argv = args = translated
    if args[0] in ("-V", "--version"):
        print(__version__)
        return 0
    subcommand = args[0]
    args = [subcommand, *_shipped_configs(args[1:])]
    if subcommand in TOOL_SUBCOMMANDS:
        return run_tool_subcommand(subcommand, args[1:])
    if subcommand not in TRAINER_SUBCOMMANDS:
        known = ", ".join([*TRAINER_SUBCOMMANDS, *TOOL_SUBCOMMANDS])
        return fail(f"unknown subcommand {subcommand!r}; choose one of: {known}")
    for path in _config_paths(args[1:]):
        if not Path(path).is_file():
            return fail(f"--config: no such file {path!r}; give the path of a recipe YAML (see recipes/)")
        problem = recipe_problem(path)
        if problem is not None:
            return fail(problem)

    from lit_factory.lightning_cli import run_trainer_subcommand

    try:
        run_trainer_subcommand(args)
    except LitFactoryError as err:
        return fail(str(err))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else fail(str(exit_.code)))
    return 0


def run_tool_subcommand(name: str, args: list[str]) -> int:
    """Import and run one of ``TOOL_SUBCOMMANDS``; our errors become one line and status 2."""
    from importlib import import_module

    from lit_factory.quiet import silence_library_noise

    silence_library_noise()
    target, _ = TOOL_SUBCOMMANDS[name]
    module, function = target.split(":")
    try:
        if name in RECIPE_TOOL_SUBCOMMANDS:
            from lit_factory.infer.recipe_options import with_recipe_options

            args = with_recipe_options(name, args)
        return int(getattr(import_module(module), function)(args) or 0)
    except LitFactoryError as err:
        return fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
