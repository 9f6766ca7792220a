"""benchmarks/vs_llamafactory.py gives both frameworks the same settings: its one LLaMA-Factory YAML per row becomes,
through our translation, the same effective batch, accumulation, cutoff, steps, precision, checkpointing, learning
rate and method as LLaMA-Factory itself reads from it (that half runs where LLaMA-Factory is installed: set
LLAMAFACTORY_PYTHON to its interpreter)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_factory.compat.llamafactory import translate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import vs_llamafactory  # noqa: E402 - a script beside the benchmarks, imported as a module

CASES = [(row, checkpointing) for row in vs_llamafactory.ROWS for checkpointing in (True, False)]


def ours(row: str, checkpointing: bool) -> dict:
    """The effective settings of our run of the row: the translated recipe's values."""
    recipe = translate(vs_llamafactory.llamafactory_config(row, checkpointing, "model", "out", 10)).recipe
    stage, data, trainer = recipe["model"]["init_args"], recipe["data"]["init_args"], recipe["trainer"]
    finetuning = stage["finetuning"]
    return {
        "batch_size": data["batch_size"], "accumulation": trainer["accumulate_grad_batches"],
        "cutoff_len": data["cutoff_len"], "max_steps": trainer["max_steps"],
        "fp32": trainer["precision"] == "32-true",
        "checkpointing": stage["model"]["gradient_checkpointing"], "lr": stage["optimizer"]["init_args"]["lr"],
        "template": data["template"], "dataset": data["dataset"], "seed": recipe["seed_everything"],
        "lora": finetuning["class_path"].endswith("LoRA"),
        "rank": finetuning.get("init_args", {}).get("r"), "alpha": finetuning.get("init_args", {}).get("alpha"),
        "dpo": recipe["model"]["class_path"].endswith("DPO"), "beta": stage.get("beta"),
    }


LLAMAFACTORY_SIDE = """
import json, sys
from llamafactory.hparams import get_train_args
model, data, training, finetuning, _ = get_train_args(json.loads(sys.argv[1]))
lora = finetuning.finetuning_type == "lora"
dpo = finetuning.stage == "dpo"
print(json.dumps({
    "batch_size": training.per_device_train_batch_size, "accumulation": training.gradient_accumulation_steps,
    "cutoff_len": data.cutoff_len, "max_steps": training.max_steps, "fp32": not (training.bf16 or training.fp16),
    "checkpointing": not model.disable_gradient_checkpointing, "lr": training.learning_rate,
    "template": data.template, "dataset": data.dataset, "seed": training.seed, "lora": lora,
    "rank": finetuning.lora_rank if lora else None, "alpha": float(finetuning.lora_alpha) if lora else None,
    "dpo": dpo, "beta": finetuning.pref_beta if dpo else None,
}))
"""


@pytest.mark.parametrize("row,checkpointing", CASES)
def test_translation_keeps_the_rows_settings(row, checkpointing):
    settings = ours(row, checkpointing)
    expected_batch = 1 if row == "LoRA DPO" else 2
    assert (settings["batch_size"], settings["accumulation"], settings["cutoff_len"]) == (expected_batch, 2, 512)
    assert settings["checkpointing"] is checkpointing and settings["fp32"] and settings["max_steps"] == 10
    assert settings["lora"] == row.startswith("LoRA") and settings["dpo"] == (row == "LoRA DPO")


@pytest.mark.skipif(not os.environ.get("LLAMAFACTORY_PYTHON"),
                    reason="set LLAMAFACTORY_PYTHON to LLaMA-Factory's python")
@pytest.mark.parametrize("row,checkpointing", [("LoRA SFT", True), ("full SFT", False), ("LoRA DPO", True)])
def test_llamafactory_reads_the_same_settings(row, checkpointing, tmp_path):
    config = vs_llamafactory.llamafactory_config(row, checkpointing, str(vs_llamafactory.TOKENIZER),
                                                 str(tmp_path / "out"), 10)
    done = subprocess.run([os.environ["LLAMAFACTORY_PYTHON"], "-c", LLAMAFACTORY_SIDE, json.dumps(config)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    theirs["dataset"] = list(theirs["dataset"])
    settings = ours(row, checkpointing)
    settings["dataset"] = list(settings["dataset"])
    assert settings == theirs
