"""The model matrix (benchmarks/model_matrix.py): tiny random models of transformers' causal-LM architectures train
through LoRA, SFT steps, adapter/merged reload, Freeze and a value head. A fixed sample runs by default; with
LIT_FACTORY_MODEL_MATRIX=all every architecture runs and must agree with docs/models.md."""

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import model_matrix  # noqa: E402 - a script beside the benchmarks, imported as a module

# Dense, MoE (router must stay untouched) and GPT-2-style (Conv1D) families.
SAMPLE = ["llama", "qwen2", "mistral", "qwen3", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe", "phimoe"]
ALL = os.environ.get("LIT_FACTORY_MODEL_MATRIX") == "all"


def documented_verified() -> set[str]:
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    table = text.split("## Not verified")[0]
    return {m.group(1) for m in re.finditer(r"^\| (\w+) \|", table, re.M)} - {"architecture"}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", model_matrix.causal_lm_architectures() if ALL else SAMPLE)
def test_architecture_trains_and_reloads(model_type, tmp_path):
    row = model_matrix.verify(model_type, tmp_path)
    if ALL:
        assert (row["status"] == "verified") == (model_type in documented_verified()), row["status"]
        return
    assert row["status"] == "verified"
    assert row["verified"] == ["Freeze", "LoRA all", "SFT", "adapter reload", "merged export", "value head"]
    assert model_type in documented_verified()


def test_head_check_can_fail(tmp_path, monkeypatch):
    """LoRA on the output head must be caught by the matrix (the check is not vacuous)."""
    from lit_factory.model import adapters

    real = adapters.LoRA.peft_config

    def with_head(self, model, train_embeddings=False):
        config = real(self, model, train_embeddings)
        config.target_modules = {"q_proj", "lm_head"}
        return config

    monkeypatch.setattr(adapters.LoRA, "peft_config", with_head)
    row = model_matrix.verify("llama", tmp_path)
    assert row["status"].startswith("lora targets") and "output head" in row["status"]


def test_router_check_can_fail(tmp_path, monkeypatch):
    """LoRA on an MoE router (here PEFT's own v4 -> v5 target, the TopKRouter's weight) must be caught."""
    from lit_factory.model import targets

    real = targets.adapter_targets

    def with_router(model, exclude=None, with_parameters=True):
        modules, parameters = real(model, exclude, with_parameters)
        return modules, parameters + ["mlp.gate.weight"]

    monkeypatch.setattr(targets, "adapter_targets", with_router)
    row = model_matrix.verify("qwen3_moe", tmp_path)
    assert row["status"].startswith("lora targets") and "MoE routers" in row["status"]
