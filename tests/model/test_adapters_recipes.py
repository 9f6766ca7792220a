"""Every method overlay in recipes/methods/ runs on top of recipes/sft/lora.yaml through `lit-factory fit`
(a tiny saved model, the demo data, a few CPU steps) and trains what the method says."""

import json
from pathlib import Path

import pytest
import torch

from lit_factory.cli import main
from tiny_models import DEMO, SPARROW, TINY, save_tiny_base

METHODS = sorted(p.stem for p in Path("recipes/methods").glob("*.yaml"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def fit(tmp_path: Path, model_path: Path, *configs: str, extra: tuple[str, ...] = ()) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(json.dumps({"model": {"init_args": {"model": {"path": str(model_path), "dtype": "float32",
                                                                      "gradient_checkpointing": False}}}}))
    status = main([
        "fit", "--config", "recipes/sft/lora.yaml", *[a for c in configs for a in ("--config", c)],
        "--config", str(overlay), *extra,
        "--trainer.precision", "32-true", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.init_args.dataset_dir", DEMO, "--data.init_args.dataset", "[sparrow_sft]",
        "--data.init_args.template", "chatml", "--data.init_args.cutoff_len", "64", "--data.init_args.val_size", "0",
    ])
    assert status == 0
    return next((tmp_path / "runs").glob("*/version_0"))


@pytest.mark.slow  # about 8 s per recipe on 2 CPU cores
@pytest.mark.parametrize("method", METHODS)
def test_method_recipe_runs(base_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM

    model_path, extra = base_dir, ()
    if method == "llama_pro":
        from lit_factory.model.expand import expand_model

        model_path = expand_model(str(base_dir), str(tmp_path / "pro"), num_expand=2)
        extra = ("--model.init_args.finetuning.init_args.num_expanded_blocks", "2")
    if method == "lora_stack":
        first = fit(tmp_path / "first", base_dir)
        extra = ("--model.init_args.model.adapter", str(first))
    run_dir = fit(tmp_path, model_path, f"recipes/methods/{method}.yaml", extra=extra)
    saved = {p.name for p in run_dir.iterdir()}
    if method == "dft":
        assert "class_path: lit_factory.stages.DFT" in (run_dir / "config.yaml").read_text()
    if "adapter_model.safetensors" in saved:
        config = json.loads((run_dir / "adapter_config.json").read_text())
        assert config["peft_type"] == ("OFT" if method == "oft" else "LORA")
        if method == "oft":
            return
        assert config["use_dora"] == (method == "dora") and config["use_rslora"] == (method == "rslora")
        if method == "lora_embeddings":
            assert set(config["modules_to_save"]) == {"embed_tokens", "lm_head"}
        return
    # Full-weight methods: compare the saved model with the one it started from.
    trained = AutoModelForCausalLM.from_pretrained(run_dir)
    start = AutoModelForCausalLM.from_pretrained(model_path)
    changed = {n.split(".")[2] if ".layers." in n else n for n, p in trained.named_parameters()
               if not torch.equal(p, start.get_parameter(n))}
    expected = {"freeze": {"0", "1"}, "llama_pro": {"1", "3"}, "badam": {"0"}}
    assert changed == expected[method] if method in expected else changed
