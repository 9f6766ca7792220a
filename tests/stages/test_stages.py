"""SFT/PreTrain stages through the Python API: parity with a plain transformers + PEFT loop, saved outputs that
plain transformers/PEFT reload with identical logits, and resuming from a Lightning checkpoint."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.model import Freeze, LoRA, ModelArgs
from lit_factory.stages import SFT, PreTrain
from tiny_models import DEMO, quiet_trainer, save_tiny_base, sparrow_data


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


trainer = quiet_trainer


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is the capital of Peru? The capital of Peru is Lima.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_lora_sft_matches_a_plain_transformers_peft_loop(base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler

    steps, lr = 5, 1e-3
    stage = SFT(ModelArgs(path=str(base_dir)), LoRA(r=8, alpha=16), partial(torch.optim.AdamW, lr=lr))
    torch.manual_seed(0)
    stage.configure_model()
    data = sparrow_data(stage.tokenizer)
    recorder = LossRecorder()
    trainer(tmp_path, steps, callbacks=[recorder]).fit(stage, datamodule=data)

    data.setup("fit")
    batches = [batch for _, batch in zip(range(steps), data.train_dataloader())]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps)
    reference = []
    model.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        reference.append(loss.item())

    assert len(recorder.losses) == steps
    assert recorder.losses == pytest.approx(reference, abs=1e-4)


def test_lora_outputs_reload_with_plain_peft(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = SFT(ModelArgs(path=str(base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))
    trainer(tmp_path, 3).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    # fit() saved the adapter and tokenizer into the run directory.
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / ".saving").exists()

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path).eval()
    base_only = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ours = logits_of(stage.model.eval(), tokenizer)
    torch.testing.assert_close(logits_of(reloaded, tokenizer), ours, rtol=0, atol=1e-5)
    assert not torch.allclose(logits_of(base_only, tokenizer), ours, atol=1e-4)  # the adapter did train


def test_freeze_outputs_reload_with_plain_transformers(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = SFT(ModelArgs(path=str(base_dir)), Freeze(trainable_layers=1), partial(torch.optim.AdamW, lr=1e-2))
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()} if stage.model else None
    trainer(tmp_path, 3).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    assert before is None  # the model is built inside fit (configure_model)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits_of(reloaded, tokenizer), logits_of(stage.model.eval(), tokenizer),
                               rtol=0, atol=1e-5)
    original = AutoModelForCausalLM.from_pretrained(base_dir)
    changed = {n for n, p in reloaded.named_parameters()
               if not torch.equal(p, original.get_parameter(n))}
    assert changed and all(n.startswith("model.layers.1.") for n in changed)


def test_lora_checkpoint_holds_only_the_adapter_and_resumes(base_dir, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def make_stage():
        return SFT(ModelArgs(path=str(base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))

    first = make_stage()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 4, enable_checkpointing=True, callbacks=[checkpoints]).fit(
        first, datamodule=sparrow_data(first.tokenizer))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["state_dict"] and all("lora_" in key for key in saved["state_dict"])

    resumed = make_stage()
    recorder = LossRecorder()
    run = trainer(tmp_path, 6, callbacks=[recorder])
    run.fit(resumed, datamodule=sparrow_data(resumed.tokenizer), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert run.global_step == 6 and len(recorder.losses) == 2
    trained_a = {n: p for n, p in first.model.named_parameters() if "lora_A" in n}
    resumed_a = dict(resumed.model.named_parameters())
    # Two more steps moved the restored adapter a little; a fresh adapter would be far away.
    for name, value in trained_a.items():
        assert (resumed_a[name] - value).abs().max() < 0.1


def test_pretrain_stage_lowers_loss_on_packed_text(base_dir, tmp_path):
    stage = PreTrain(ModelArgs(path=str(base_dir)), None, partial(torch.optim.AdamW, lr=3e-3))
    data = DataModule(dataset="sparrow_text", dataset_dir=DEMO, tokenizer=stage.tokenizer, objective="pretrain",
                      cutoff_len=32, batch_size=4, shuffle=False)
    recorder = LossRecorder()
    trainer(tmp_path, 12, callbacks=[recorder]).fit(stage, datamodule=data)
    assert recorder.losses[-1] < recorder.losses[0] - 0.5


def test_adapter_resumes_training_and_loads_for_inference(base_dir, tmp_path):
    from lit_factory.model import build_inference_model

    first = SFT(ModelArgs(path=str(base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))
    trainer(tmp_path / "first", 3).fit(first, datamodule=sparrow_data(first.tokenizer))
    adapter = tmp_path / "first"
    tokenizer = first.tokenizer
    expected = logits_of(first.model.eval(), tokenizer)

    inference = build_inference_model(ModelArgs(path=str(base_dir), adapter=str(adapter)), tokenizer)
    assert not any(p.requires_grad for p in inference.parameters())
    torch.testing.assert_close(logits_of(inference, tokenizer), expected, rtol=0, atol=1e-5)

    resumed = SFT(ModelArgs(path=str(base_dir), adapter=str(adapter)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))
    resumed.configure_model()
    torch.testing.assert_close(logits_of(resumed.model.eval(), tokenizer), expected, rtol=0, atol=1e-5)
    assert any(p.requires_grad for n, p in resumed.model.named_parameters() if "lora_B" in n)
