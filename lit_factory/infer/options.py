"""Command-line options shared by ``lit-factory chat``, ``serve`` and ``eval``: which model, which template, how to
decode. jsonargparse reads them from the dataclasses' signatures and docstrings, so ``--help`` shows the same text as
the Python API; parse errors print one line and exit with status 2 like the rest of the CLI."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any, NoReturn, Optional

from jsonargparse import ArgumentParser, Namespace

from lit_factory.infer.engine import GenerationArgs


RECIPE_HELP = ("--config RECIPE: take --model, --adapter, --tokenizer, --template, --dtype and the generation settings "
               "from a recipe, or from the config.yaml a run saved beside its model (runs/NAME/version_N/config.yaml); "
               "options given on the command line win.")


class ToolParser(ArgumentParser):
    """jsonargparse parser whose errors are one line and status 2."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse probing internally
            return super().error(message, ex)
        from lit_factory.errors import fail

        sys.exit(fail(f"{self.prog}: {message}"))


def model_parser(prog: str, description: str, generation: bool = True) -> ToolParser:
    """A parser with the model options (and the generation options when ``generation``)."""
    parser = ToolParser(prog=prog, description=description, epilog=RECIPE_HELP)
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="Model folder or hub id (a merged or full fine-tuned model, or "
                       "the base model of --adapter).")
    group.add_argument("--adapter", default=None, help="PEFT adapter folder (a LoRA run directory) to apply.")
    group.add_argument("--tokenizer", default=None, help="Tokenizer folder; defaults to --model.")
    group.add_argument("--template", default="auto", help="Chat template name from templates/ or a YAML path; "
                       "auto picks it from the tokenizer. Use the template the model was trained with.")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="Weight dtype (auto: bf16/fp16 on CUDA, fp32 on CPU).")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ...; auto picks CUDA when available.")
    if generation:
        parser.add_class_arguments(GenerationArgs, nested_key=None, as_group=True)
    return parser


def model_args_from(options: Namespace) -> Any:
    """``ModelArgs`` from the parsed model options (raises our one-line errors for bad paths)."""
    from lit_factory.model.builder import ModelArgs

    return ModelArgs(path=options.model, tokenizer=options.tokenizer, adapter=options.adapter, dtype=options.dtype)


def generation_from(options: Namespace) -> GenerationArgs:
    """``GenerationArgs`` from the parsed generation options."""
    return GenerationArgs(**{field.name: options[field.name] for field in fields(GenerationArgs)})


def load_engine(options: Namespace) -> Any:
    """The ``ChatEngine`` the parsed options describe."""
    from lit_factory.infer.engine import ChatEngine

    return ChatEngine.load(model_args_from(options), options.template, generation_from(options), options.device)
