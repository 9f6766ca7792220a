"""Files shipped with lit-factory: chat templates, recipes and the demo assets, in a checkout or an installed wheel.

In a checkout, ``templates/`` and ``recipes/`` sit at the top of the repository and the demo assets under
``lit_factory/assets/``. A wheel carries all three inside the package (``lit_factory/templates``,
``lit_factory/recipes``, mapped by pyproject.toml), so they are looked up there first and in the checkout second.

Recipes and the README name these files relative to a checkout's root (``recipes/sft/lora.yaml``,
``lit_factory/assets/demo``); :func:`resolve_shipped_path` lets the same commands run from any folder.
Also the `lit-factory recipes` subcommand: list, show and copy the shipped recipes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from lit_factory.errors import LitFactoryError
from lit_factory.io import write_file_atomically

# A path, not an importlib.resources Traversable: these folders are handed to tokenizers, datasets and subprocesses,
# which need real files, and wheels install unzipped.
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent
SHIPPED_FOLDERS = ("templates", "recipes")


def shipped_dir(name: str) -> Path:
    """``templates`` or ``recipes``: the copy inside the installed package, else the checkout's top-level folder."""
    if name not in SHIPPED_FOLDERS:
        raise ValueError(f"not a shipped folder: {name!r}")
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else CHECKOUT_DIR / name


def resolve_shipped_path(path: str) -> str:
    """``path`` as given when it exists from the working directory (or is absolute, or names nothing we ship);
    otherwise, for a path written relative to a checkout's root (``lit_factory/...``, ``recipes/...``,
    ``templates/...``), the shipped copy when it exists."""
    relative = Path(path)
    if relative.is_absolute() or relative.exists() or not relative.parts:
        return path
    head, *rest = relative.parts
    if head == PACKAGE_DIR.name:
        candidate = PACKAGE_DIR.joinpath(*rest)
    elif head in SHIPPED_FOLDERS:
        candidate = shipped_dir(head).joinpath(*rest)
    else:
        return path
    return str(candidate) if candidate.exists() else path


def list_recipes(include_methods: bool = True) -> list[str]:
    """Shipped recipes as paths relative to ``recipes/`` (``quickstart.yaml``, ``sft/lora.yaml``...); method
    overlays (``methods/*.yaml``, added on top of a base recipe with a second ``--config``) unless excluded."""
    root = shipped_dir("recipes")
    names = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))
    return names if include_methods else [name for name in names if not is_method_overlay(name)]


def is_method_overlay(name: str) -> bool:
    """Whether the recipe ``name`` (relative to ``recipes/``) is an overlay (a method, ``methods/``, or a
    distributed strategy, ``distributed/``) rather than a base recipe."""
    return Path(name).parts[0] in ("methods", "distributed")


def recipe_path(name: str) -> Path:
    """The shipped recipe ``name`` (``sft/lora.yaml``; ``recipes/`` prefix and ``.yaml`` suffix optional)."""
    clean = name.removeprefix("recipes/")
    clean = clean if clean.endswith(".yaml") else f"{clean}.yaml"
    path = shipped_dir("recipes") / clean
    if ".." in Path(clean).parts or not path.is_file():
        raise LitFactoryError(f"recipe {name!r}: not a shipped recipe. Fix: one of {', '.join(list_recipes())} "
                              "(`lit-factory recipes` lists them).")
    return path


def recipe_summary(path: Path) -> str:
    """The first sentence of a recipe's opening comment: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip().split(". ")[0].removesuffix(".")
        if line.strip():
            break
    return ""


def copy_recipe(name: str, destination: str) -> Path:
    """Copy the shipped recipe ``name`` to ``destination`` (a file, or a folder that gets the recipe's file name);
    never replaces an existing file. Returns the written path."""
    source = recipe_path(name)
    target = Path(destination)
    if target.is_dir() or destination.endswith(("/", os.sep)):
        target = target / source.name
    if target.exists():
        raise LitFactoryError(f"{target}: already exists; lit-factory does not replace files it did not create. "
                              "Fix: give another destination or remove it.")
    # Written next to the target and renamed into place, so a kill never leaves half a recipe under its name.
    write_file_atomically(target, lambda staging: staging.write_bytes(source.read_bytes()), replace=False)
    return target


def main(argv: Optional[list[str]] = None) -> int:
    """`lit-factory recipes [list | show NAME | copy NAME [DEST]]`."""
    parser = argparse.ArgumentParser(
        prog="lit-factory recipes",
        description="The recipes shipped with lit-factory. Run one directly (`lit-factory fit --config "
                    "recipes/quickstart.yaml` works from any folder) or copy it to edit.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="list the shipped recipes (the default)")
    show = commands.add_parser("show", help="print a recipe")
    show.add_argument("name", help="a recipe, e.g. sft/lora.yaml")
    copy = commands.add_parser("copy", help="copy a recipe to edit it (never replaces a file)")
    copy.add_argument("name", help="a recipe, e.g. sft/lora.yaml")
    copy.add_argument("destination", nargs="?", default=".", help="a file or folder (default: the current folder)")
    args = parser.parse_args(argv)

    if args.command == "show":
        sys.stdout.write(recipe_path(args.name).read_text(encoding="utf-8"))
    elif args.command == "copy":
        print(f"copied recipes/{recipe_path(args.name).relative_to(shipped_dir('recipes')).as_posix()} to "
              f"{copy_recipe(args.name, args.destination)}")
    else:
        root = shipped_dir("recipes")
        names = list_recipes()
        width = max(len(name) for name in names)
        for name in names:
            print(f"{name:<{width}}  {recipe_summary(root / name)}")
        print(f"\n{len(names)} recipes in {root}. methods/* are overlays: lit-factory fit --config recipes/sft/lora.yaml "
              "--config recipes/methods/dora.yaml")
    return 0
