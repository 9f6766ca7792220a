"""``lit-factory data``: what a recipe's data turns into, before spending compute on it.

Prints, per dataset and for the mix: how many rows were read and kept, token-length percentiles (before
truncation), the share of examples longer than ``cutoff_len`` (truncated, or dropped when no reply token fits), the
share of tokens that carry loss, and the first samples decoded from the very batches the stage would get, with the
loss-bearing text between « and ».

    lit-factory data --config recipes/sft/lora.yaml [-n 3]
    lit-factory data --dataset-dir D --dataset NAME[,NAME] --tokenizer T [--template X] [--objective O] [-n 3]

Options given on the command line override the recipe's ``data`` section.
"""

from __future__ import annotations

import argparse
from typing import Any

from lit_factory.data.objectives import KTO, OBJECTIVES, Objective, Pairwise, Supervised
from lit_factory.errors import LitFactoryError
from lit_factory.shipped import resolve_shipped_path

LOSS_OPEN, LOSS_CLOSE = "«", "»"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lit-factory data", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", help="a recipe YAML: its data section and model tokenizer are used")
    parser.add_argument("--dataset-dir", help="folder of dataset_info.json")
    parser.add_argument("--dataset", help="entry name(s), comma-separated")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the recipe model's)")
    parser.add_argument("--template", help="chat template name, 'auto' or 'tokenizer'")
    parser.add_argument("--objective", choices=list(OBJECTIVES))
    parser.add_argument("--cutoff-len", type=int)
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("-n", "--num-samples", type=int, default=3, help="samples to print per dataset")
    return parser.parse_args(argv)


# Command-line options that override a recipe, and the recipe key each one sets.
RECIPE_KEYS = {"dataset_dir": "data.init_args.dataset_dir", "dataset": "data.init_args.dataset",
               "template": "data.init_args.template", "cutoff_len": "data.init_args.cutoff_len",
               "max_samples": "data.init_args.max_samples", "tokenizer": "model.init_args.model.tokenizer"}


def recipe_settings(path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arguments of the data module the recipe at ``path`` trains on: read by the trainer CLI's parser and
    built with its links (the stage's tokenizer, data objective and image plugin), ``overrides`` (command-line
    options, ``RECIPE_KEYS`` and ``objective``) written over the recipe first."""
    from lit_factory.recipe import parse_recipe, read_recipe

    overrides = dict(overrides or {})
    recipe = read_recipe(path)
    for option, key in RECIPE_KEYS.items():
        if overrides.get(option) is not None:
            *sections, leaf = key.split(".")
            section = recipe
            for name in sections:
                if not isinstance(section.get(name), dict):
                    section[name] = {}
                section = section[name]
            section[leaf] = overrides[option]
    _, data = parse_recipe(recipe, source=f"--config {path}").stage_and_data()
    settings = {**dict(data.hparams), "tokenizer": data.tokenizer, "objective": data.objective, "media": data.media}
    if overrides.get("objective") is not None:  # a link target: the stage's choice unless the command line says
        settings["objective"] = overrides["objective"]
    return settings


def decoded_segments(tokenizer: Any, ids: list[int], labels: list[int] | None) -> str:
    """The ids decoded, loss-bearing runs between « and »."""
    if labels is None:
        return tokenizer.decode(ids)
    text, run, run_loss = [], [], False
    for token, label in zip(ids, labels):
        if run and (label != -100) != run_loss:
            text.append(_run(tokenizer, run, run_loss))
            run = []
        run_loss = label != -100
        run.append(token)
    if run:
        text.append(_run(tokenizer, run, run_loss))
    return "".join(text)


def _run(tokenizer: Any, ids: list[int], loss: bool) -> str:
    decoded = tokenizer.decode(ids)
    return f"{LOSS_OPEN}{decoded}{LOSS_CLOSE}" if loss else decoded


def _percentiles(values: list[int]) -> str:
    import numpy as np

    if not values:
        return "-"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, max {max(values)}"


def describe(name: str, module: Any, full_module: Any | None, count: int) -> list[str]:
    """The report lines of one prepared dataset (``full_module``: the same data without truncation)."""
    rows, objective = module.train_set, module.objective
    sequences = [seq for row in rows for seq in objective.sequences(row)]
    loss = sum(sum(label != -100 for label in labels) for _, labels in sequences if labels is not None)
    total = sum(len(ids) for ids, _ in sequences)
    lines = [f"== {name}: {len(rows)} examples ({module.objective})"]
    if full_module is not None:
        lengths = [len(ids) for row in full_module.train_set for ids, _ in objective.sequences(row)]
        longer = sum(length > module.cutoff_len for length in lengths)
        lines.append(f"   tokens per sequence before cutoff: {_percentiles(lengths)}")
        lines.append(f"   longer than cutoff_len={module.cutoff_len} (truncated or dropped): "
                     f"{100 * longer / max(1, len(lengths)):.1f}%")
    if objective.labelled:
        lines.append(f"   tokens with loss: {100 * loss / max(1, total):.1f}% of {total}")
    for index in range(min(count, len(rows))):
        for tag, (ids, labels) in zip(objective.sequence_names, objective.sequences(rows[index])):
            lines += [f"-- {tag} {index}", decoded_segments(module.tokenizer, ids, labels)]
    return lines


def natural_objective(name: str, dataset_dir: str) -> type[Objective]:
    """The objective a dataset is made for, when none is given: ranking -> pairwise, a kto_tag -> kto."""
    from lit_factory.data.spec import get_dataset_spec

    spec = get_dataset_spec(name, dataset_dir)
    return Pairwise if spec.ranking else KTO if spec.column("kto_tag") else Supervised


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    overrides = {"dataset_dir": args.dataset_dir, "dataset": args.dataset, "tokenizer": args.tokenizer,
                 "template": args.template, "objective": args.objective, "cutoff_len": args.cutoff_len,
                 "max_samples": args.max_samples}
    given = {key: value for key, value in overrides.items() if value is not None}
    settings = recipe_settings(args.config, given) if args.config else given
    settings["dataset_dir"] = resolve_shipped_path(settings.get("dataset_dir", "data"))
    for key in ("dataset", "tokenizer"):
        if not settings.get(key):
            raise LitFactoryError(f"lit-factory data: no {key} given. Fix: --{key} or --config with a recipe.")
    # Preview the data as it is, not a split or a stream of it.
    for key in ("val_size", "streaming", "interleave_probs", "mix_strategy", "shuffle", "batch_size",
                "eval_batch_size", "num_workers"):
        settings.pop(key, None)
    settings["shuffle"] = False
    settings["batch_size"] = 2  # KTO needs two rows per batch; nothing here is batched otherwise

    from lit_factory.data.datamodule import DataModule

    names = settings.pop("dataset")
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    for name in names:  # catalogue errors before the tokenizer loads
        natural_objective(name, settings.get("dataset_dir", "data"))
    tokenizer = DataModule(names, **settings).tokenizer  # loaded once, shared below
    settings["tokenizer"] = tokenizer
    lines = []
    for name in names:
        objective = settings.get("objective") or natural_objective(name, settings.get("dataset_dir", "data"))
        module = DataModule(name, **{**settings, "objective": objective})
        module.setup()
        full = None
        if not module.objective.always_packs and not settings.get("packing"):
            full = DataModule(name, **{**settings, "objective": objective, "cutoff_len": 10**9})
            full.setup()
        lines += describe(name, module, full, args.num_samples)
    print(f"lit-factory data: loss-bearing text is between {LOSS_OPEN} and {LOSS_CLOSE}")
    print("\n".join(lines))
    return 0
