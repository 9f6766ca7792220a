"""The optimizer factory: class-path optimizers still work; LoRA+ groups; GaLore's low-rank updates lower the loss;
BAdam updates one block per phase in the configured order; bitsandbytes 8-bit and paged AdamW train on CPU."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.optim import BAdam, GaLore, LoRAPlus, build_optimizer
from lit_factory.stages import SFT
from tiny_models import DEMO, SPARROW, TINY


def tiny_args() -> ModelArgs:
    return ModelArgs(config=dict(TINY), tokenizer=SPARROW)


class StepRecorder(pl.Callback):
    """Losses, and a copy of every parameter after each optimizer step."""

    def __init__(self):
        self.losses, self.snapshots = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.snapshots.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})


def fit(stage, tmp_path, steps: int) -> StepRecorder:
    recorder = StepRecorder()
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)
    pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[recorder]).fit(stage, datamodule=data)
    return recorder


def changed_layers(before: dict, after: dict) -> set[str]:
    """Which top-level pieces changed: 'layers.N', 'embed', 'norm', 'head'."""
    names = set()
    for name, value in after.items():
        if not torch.equal(value, before[name]):
            parts = name.split(".")
            names.add(f"layers.{parts[2]}" if "layers" in parts else parts[-2])
    return names


def test_class_path_optimizer_gets_the_trainable_parameters():
    args = tiny_args()
    model = build_model(args, build_tokenizer(args), LoRA(r=2))
    optimizer = build_optimizer(partial(torch.optim.SGD, lr=0.1), model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == sum(1 for p in model.parameters() if p.requires_grad)


def test_loraplus_gives_b_matrices_the_ratio_times_the_learning_rate():
    args = tiny_args()
    model = build_model(args, build_tokenizer(args), LoRA(r=2))
    optimizer = LoRAPlus(partial(torch.optim.SGD), lr=0.01, lr_ratio=16).build(model)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        if "lora_A" in name:
            assert lr_of[id(parameter)] == pytest.approx(0.01)
        elif "lora_B" in name:
            assert lr_of[id(parameter)] == pytest.approx(0.16)
    assert len(lr_of) == sum(1 for p in model.parameters() if p.requires_grad)
    with pytest.raises(LitFactoryError, match="LoRAPlus needs"):
        LoRAPlus().build(build_model(args, build_tokenizer(args)))


def test_loraplus_runs_in_a_stage_with_the_schedule(tmp_path):
    stage = SFT(tiny_args(), LoRA(r=4), LoRAPlus(partial(torch.optim.AdamW), lr=1e-3, lr_ratio=8))
    recorder = fit(stage, tmp_path, 3)
    optimizer = stage.trainer.optimizers[0]
    initial = sorted({group["initial_lr"] for group in optimizer.param_groups if group["params"]})
    assert pytest.approx(1e-3) in initial and pytest.approx(8e-3) in initial
    assert len(recorder.losses) == 3


def test_galore_projects_updates_to_low_rank_and_lowers_the_loss(tmp_path):
    stage = SFT(tiny_args(), None, GaLore(lr=2e-3, rank=4, update_interval=50, scale=1.0))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    recorder = fit(stage, tmp_path, 15)
    projected = stage.model.model.layers[0].mlp.down_proj.weight  # [64, 128]
    first_update = recorder.snapshots[0]["model.layers.0.mlp.down_proj.weight"] - before["model.layers.0.mlp.down_proj.weight"]
    # GaLore's update is P @ (Adam step in the rank-4 projection): rank <= 4 for as long as P is fixed.
    assert torch.linalg.matrix_rank(first_update).item() <= 4
    assert projected.shape == (64, 128)
    head = recorder.snapshots[0]["lm_head.weight"] - before["lm_head.weight"]
    assert torch.linalg.matrix_rank(head).item() > 4  # the output head is not projected
    assert min(recorder.losses[-3:]) < recorder.losses[0] - 0.3


def test_galore_target_errors_are_one_line():
    args = tiny_args()
    model = build_model(args, build_tokenizer(args))
    with pytest.raises(LitFactoryError, match="target_modules"):
        GaLore(target_modules=["query_key_value"]).build(model)


@pytest.mark.parametrize("order, expected", [
    ("ascending", ["layers.0", "layers.0", "layers.1", "layers.1", "layers.0"]),
    ("descending", ["layers.1", "layers.1", "layers.0", "layers.0", "layers.1"]),
])
def test_badam_updates_one_block_per_phase_in_order(tmp_path, order, expected):
    stage = SFT(tiny_args(), None, BAdam(partial(torch.optim.AdamW, lr=3e-3), switch_every=2, order=order))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    recorder = fit(stage, tmp_path, len(expected))
    phases = [changed_layers(previous, current)
              for previous, current in zip([before, *recorder.snapshots], recorder.snapshots)]
    assert phases == [{block} for block in expected]


def test_badam_random_order_visits_every_block_and_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    stage = SFT(tiny_args(), None, BAdam(partial(torch.optim.AdamW, lr=3e-3), switch_every=3, order="random"))
    stage.configure_model()
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    recorder = fit(stage, tmp_path, 12)
    phases = [changed_layers(previous, current)
              for previous, current in zip([before, *recorder.snapshots], recorder.snapshots)]
    assert all(len(phase) == 1 for phase in phases)
    sweep = [phases[i] for i in range(0, 6, 3)]  # one permutation of the 2 blocks
    assert set().union(*sweep) == {"layers.0", "layers.1"}
    # The first batch again (no shuffling): batches differ too much for a later batch's loss to compare.
    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)
    data.setup("fit")
    with torch.no_grad():
        assert float(stage.loss(next(iter(data.train_dataloader())))) < recorder.losses[0] - 0.1


def test_badam_refuses_lora():
    args = tiny_args()
    with pytest.raises(LitFactoryError, match="full fine-tuning"):
        BAdam().build(build_model(args, build_tokenizer(args), LoRA(r=2)))


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit"])
def test_bitsandbytes_8bit_optimizers_train_on_cpu(tmp_path, name):
    import bitsandbytes

    optimizer_class = getattr(bitsandbytes.optim, name)
    # min_8bit_size=0: the tiny model's matrices are below bitsandbytes' default 4096-element threshold.
    stage = SFT(tiny_args(), None, partial(optimizer_class, lr=3e-3, min_8bit_size=0))
    recorder = fit(stage, tmp_path, 10)
    states = stage.trainer.optimizers[0].state
    weight = stage.model.model.layers[0].mlp.down_proj.weight
    assert states[weight]["state1"].dtype == torch.uint8  # 8-bit Adam moments
    assert min(recorder.losses[-3:]) < recorder.losses[0] - 0.3
