"""``--config RECIPE`` for ``chat``, ``serve``, ``eval`` and ``export``: their model options read from a recipe.

The recipe is a training or predict recipe, or the ``config.yaml`` a run saved beside its outputs. From it come the
model (``model.init_args.model``: ``path``, ``tokenizer``, ``adapter``, ``dtype``), the chat template
(``data.init_args.template``) and the generation settings (``model.init_args.generation``). A run folder's
``config.yaml`` points at what the run trained: a full model there is ``--model`` itself; an adapter there is
``--adapter`` on the recipe's base ``model.path``, with the tokenizer the run saved. Options given on the command
line win over the recipe's. A LLaMA-Factory YAML is read by its own translation (``lit_factory.compat``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lit_factory.errors import LitFactoryError

MODEL_OPTIONS = ("--model", "--adapter", "--tokenizer", "--template", "--dtype")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")
# Which options each subcommand takes from a recipe (export picks its dtype from the base model, not the recipe).
TOOL_OPTIONS: dict[str, tuple[str, ...]] = {
    "chat": MODEL_OPTIONS + tuple(f"--{key}" for key in GENERATION_KEYS),
    "serve": MODEL_OPTIONS + tuple(f"--{key}" for key in GENERATION_KEYS),
    "eval": MODEL_OPTIONS,
    "export": ("--model", "--adapter"),
}
LLAMAFACTORY_VERBS = {"serve": "api"}  # our subcommand -> LLaMA-Factory's verb, where they differ


def _section(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """``recipe[name]``'s arguments, whether written as ``class_path``/``init_args`` or flat."""
    section = recipe.get(name)
    if not isinstance(section, dict):
        return {}
    init_args = section.get("init_args")
    return init_args if isinstance(init_args, dict) else section


def recipe_options(path: str) -> dict[str, str]:
    """Option -> value for the model, template and generation settings of the recipe at ``path``."""
    from lit_factory.recipe import read_config_file

    if not Path(path).is_file():
        raise LitFactoryError(f"--config: no such file {path!r}. Fix: give a recipe YAML or a run's config.yaml.")
    recipe = read_config_file(path)
    if "model" not in recipe and "model_name_or_path" in recipe:
        return {}  # a LLaMA-Factory YAML: see `llamafactory_options`
    stage = _section(recipe, "model")
    model = stage.get("model") if isinstance(stage.get("model"), dict) else {}
    options: dict[str, Any] = {}
    run_dir = Path(path).parent
    if (run_dir / "adapter_config.json").is_file():  # a LoRA run: its adapter on the recipe's base model
        options.update({"--model": model.get("path"), "--adapter": str(run_dir), "--tokenizer": str(run_dir)})
    elif (run_dir / "config.json").is_file():  # a full fine-tuning run: the saved model and tokenizer
        options["--model"] = str(run_dir)
    else:
        options.update({"--model": model.get("path"), "--adapter": model.get("adapter"),
                        "--tokenizer": model.get("tokenizer")})
    if options.get("--model") is None:
        raise LitFactoryError(
            f"--config {path}: the recipe builds a new model from model.config and names no saved one. Fix: give the "
            "config.yaml that fit saved beside the trained model (runs/<name>/version_N/config.yaml), or --model."
        )
    if model.get("dtype") not in (None, "auto"):
        options["--dtype"] = model["dtype"]
    options["--template"] = _section(recipe, "data").get("template")
    generation = stage.get("generation") if isinstance(stage.get("generation"), dict) else {}
    options.update({f"--{key}": generation.get(key) for key in GENERATION_KEYS})
    return {option: str(value) for option, value in options.items() if value is not None}


def llamafactory_options(tool: str, path: str) -> Optional[list[str]]:
    """Our options for a LLaMA-Factory inference/merge YAML (its translation), or None for our own recipes."""
    import yaml

    recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if "model" in recipe or "model_name_or_path" not in recipe:
        return None
    from lit_factory.compat.commands import llamafactory_args

    translated = llamafactory_args([LLAMAFACTORY_VERBS.get(tool, tool), path])
    return list(translated[1:]) if isinstance(translated, list) else None


def _given(option: str, args: list[str]) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in args)


def with_recipe_options(tool: str, args: list[str]) -> list[str]:
    """``args`` with each ``--config PATH`` replaced by the options it sets that ``args`` does not give itself
    (later recipes win over earlier ones)."""
    rest, configs, i = [], [], 0
    while i < len(args):
        if args[i] in ("-c", "--config"):
            if i + 1 >= len(args):
                raise LitFactoryError("--config: expected a recipe path. Fix: --config runs/NAME/version_N/config.yaml")
            configs.append(args[i + 1])
            i += 2
        elif args[i].startswith("--config="):
            configs.append(args[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    if not configs or any(arg in ("-h", "--help") for arg in rest):
        return rest
    chosen: dict[str, str] = {}
    extra: list[str] = []
    for path in configs:
        found = recipe_options(path)
        translated = llamafactory_options(tool, path) if not found else None
        if translated is not None:
            extra += translated
        chosen.update({option: value for option, value in found.items() if option in TOOL_OPTIONS[tool]})
    taken = [part for option, value in chosen.items() if not _given(option, rest) for part in (option, value)]
    return [*extra, *taken, *rest]  # options given later on a command line win (argparse keeps the last)
