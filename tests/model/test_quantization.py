"""Quantized bases: NF4 + double quantization and LLM.int8 through bitsandbytes (on CPU), QLoRA training that
lowers the loss, adapters-only rule, and one-line errors for GPTQ/AWQ/AQLM checkpoints without their packages."""

import json
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import Freeze, Full, LoRA, ModelArgs, build_inference_model, build_model, build_tokenizer
from lit_factory.model.quantization import BitsAndBytes
from lit_factory.stages import SFT
from tiny_models import DEMO, SPARROW, TINY, save_tiny_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_nf4_double_quantized_base_trains_a_lora_adapter_on_cpu(base_dir, tmp_path):
    import bitsandbytes as bnb

    stage = SFT(ModelArgs(path=str(base_dir), quantization=BitsAndBytes(4, "nf4", double_quantization=True)),
                LoRA(r=8, alpha=16), partial(torch.optim.AdamW, lr=5e-3))
    stage.configure_model()
    quantized = [m for m in stage.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # every q/k/v/o/gate/up/down projection of both layers
    state = quantized[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: the absmax constants are quantized too
    assert all(p.dtype == torch.float32 for p in stage.model.parameters() if p.requires_grad)
    assert all("lora_" in n for n, p in stage.model.named_parameters() if p.requires_grad)

    recorder = LossRecorder()
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)
    pl.Trainer(max_steps=15, accelerator="cpu", devices=1, precision="32-true", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[recorder]).fit(stage, datamodule=data)
    assert min(recorder.losses[-3:]) < recorder.losses[0] - 0.3

    # The adapter loads back onto the quantized base for inference.
    inference = build_inference_model(ModelArgs(path=str(base_dir), quantization=BitsAndBytes(), adapter=str(tmp_path)),
                                      stage.tokenizer)
    ids = stage.tokenizer("The capital of Peru is Lima.", return_tensors="pt")
    with torch.no_grad():
        trained = stage.model.eval()(**ids).logits
        # bitsandbytes' CPU 4-bit kernels differ slightly between the training-prepared and the inference model.
        torch.testing.assert_close(inference(**ids).logits, trained, rtol=0, atol=5e-3)
        with inference.disable_adapter():
            assert (inference(**ids).logits - trained).abs().max() > 0.05  # the adapter is what makes them agree


def test_nf4_weights_are_the_bitsandbytes_quantization_of_the_base(base_dir):
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM

    args = ModelArgs(path=str(base_dir), quantization=BitsAndBytes(4, "nf4", double_quantization=False))
    model = build_model(args, build_tokenizer(args), LoRA(r=2))
    layer = model.base_model.model.model.layers[0].mlp.up_proj.base_layer
    original = AutoModelForCausalLM.from_pretrained(base_dir).model.layers[0].mlp.up_proj.weight.detach()
    ours = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    packed, state = bnbf.quantize_4bit(original, quant_type="nf4", blocksize=layer.weight.quant_state.blocksize)
    torch.testing.assert_close(ours.float(), bnbf.dequantize_4bit(packed, state).float())
    assert (ours.float() - original).abs().max() < 0.2 * original.abs().max()


def test_int8_base_trains_lora(base_dir):
    import bitsandbytes as bnb

    args = ModelArgs(path=str(base_dir), quantization=BitsAndBytes(bits=8))
    tokenizer = build_tokenizer(args)
    model = build_model(args, tokenizer, LoRA(r=4))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    ids = tokenizer("The capital of Peru is Lima.", return_tensors="pt")
    loss = model(**ids, labels=ids["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A's gradient is 0 while B = 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("finetuning", [Full(), Freeze(trainable_layers=1), None])
def test_full_or_freeze_on_a_quantized_model_is_a_one_line_error(base_dir, finetuning):
    args = ModelArgs(path=str(base_dir), quantization=BitsAndBytes())
    with pytest.raises(LitFactoryError, match="only adapters"):
        build_model(args, build_tokenizer(args), finetuning)


def test_quantization_option_errors(base_dir):
    with pytest.raises(LitFactoryError, match="model.quantization"):
        ModelArgs(config=dict(TINY), tokenizer=SPARROW, quantization=BitsAndBytes())


@pytest.mark.parametrize("method, package", [("gptq", "optimum"), ("awq", "gptqmodel"), ("aqlm", "aqlm")])
def test_prequantized_checkpoint_without_its_package_is_a_one_line_error(base_dir, tmp_path, method, package):
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    for item in base_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ModelArgs(path=str(tmp_path))
    with pytest.raises(LitFactoryError, match=rf"{method.upper()}-quantized; loading it needs .*{package}"):
        build_model(args, build_tokenizer(args), LoRA())
    with pytest.raises(LitFactoryError, match="already quantized"):
        build_model(ModelArgs(path=str(tmp_path), quantization=BitsAndBytes()), build_tokenizer(args), LoRA())
