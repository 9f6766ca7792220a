"""Speed options of the model and the loss head: compiled decoder layers (CPU), Liger's kernels (CUDA only: a one-line
error elsewhere; the CUDA checks skip without a GPU and liger-kernel)."""

import importlib.util

import pytest
import torch

from lit_factory.errors import LitFactoryError
from lit_factory.model import LoRA, ModelArgs, build_model, build_tokenizer
from lit_factory.model.patches import CompileLayers, LigerKernels
from lit_factory.stages import SFT
from lit_factory.stages.lm_head import ChunkedLogits, FullLogits
from tiny_models import DEMO, SPARROW, TINY, save_tiny_base

CUDA_AND_LIGER = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
    reason="Liger's kernels need CUDA and liger-kernel (pip install 'lit-factory[liger]')",
)


def sft_batch(device="cpu"):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 200, (2, 24), generator=generator)
    labels = input_ids.clone()
    labels[:, :8] = -100
    return {k: v.to(device) for k, v in
            dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).items()}


def loss_and_gradients(stage, batch):
    stage.model.zero_grad()
    loss = stage.loss(batch)
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in stage.model.named_parameters()
                                   if p.grad is not None}


def test_liger_kernels_off_cuda_are_a_one_line_error():
    args = ModelArgs(config=dict(TINY), tokenizer=SPARROW, patches=[LigerKernels()])
    with pytest.raises(LitFactoryError, match="liger_kernel\): .*need CUDA; this run is on cpu"):
        build_model(args, build_tokenizer(args), None, torch.device("cpu"))


@pytest.mark.slow
def test_compiled_decoder_layers_train_like_eager_ones():
    results = []
    for compile_layers in (False, True):
        torch.manual_seed(0)
        # One layer: compiling on a 2-core CPU takes most of this test's time.
        config = dict(TINY, num_hidden_layers=1)
        patches = [CompileLayers()] if compile_layers else []
        stage = SFT(ModelArgs(config=config, tokenizer=SPARROW, patches=patches), LoRA(r=4))
        stage.configure_model()
        layers = stage.model.get_base_model().get_decoder().layers
        assert all((layer._compiled_call_impl is not None) == compile_layers for layer in layers)
        results.append(loss_and_gradients(stage, sft_batch()))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@CUDA_AND_LIGER
def test_liger_kernels_and_fused_loss_on_cuda_match_the_plain_path():
    device = torch.device("cuda")
    results = []
    for liger, head in ((False, FullLogits()), (True, ChunkedLogits())):
        torch.manual_seed(0)
        stage = SFT(ModelArgs(config=dict(TINY), tokenizer=SPARROW, dtype="float32",
                              patches=[LigerKernels()] if liger else []),
                    LoRA(r=4), loss_head=head)
        stage._device = device
        stage.model = build_model(stage.model_args, stage.tokenizer, stage.finetuning, device).to(device)
        results.append(loss_and_gradients(stage, sft_batch(device)))
    (plain_loss, plain_grads), (liger_loss, liger_grads) = results
    torch.testing.assert_close(liger_loss, plain_loss, rtol=1e-4, atol=1e-4)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(liger_grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


# ---- the recipe chooses the head ----------------------------------------------------------------------------------
def sft_recipe(directory, base, loss_head: dict):
    import yaml

    config = {
        "seed_everything": 7,
        "trainer": {"accelerator": "cpu", "precision": "32-true", "max_steps": 3, "log_every_n_steps": 1,
                    "limit_val_batches": 0, "enable_model_summary": False, "enable_progress_bar": False,
                    "enable_checkpointing": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(directory), "name": "run", "version": 0}}},
        "model": {"class_path": "lit_factory.stages.SFT", "init_args": {
            "model": {"path": str(base)}, "finetuning": {"class_path": "lit_factory.model.Full"},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}, "lr_schedule": "constant",
            "loss_head": loss_head}},
        "data": {"class_path": "lit_factory.data.DataModule", "init_args": {
            "dataset_dir": DEMO, "dataset": ["sparrow_sft"], "template": "chatml", "cutoff_len": 64,
            "batch_size": 4, "shuffle": False}},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_recipes_choose_the_loss_head_and_both_train_alike(tmp_path, capsys):
    import csv

    from safetensors.torch import load_file

    from lit_factory.cli import main

    base = save_tiny_base(tmp_path / "base")
    runs = {}
    for name, head in [("full", {"class_path": "lit_factory.stages.lm_head.FullLogits"}),
                       ("chunked", {"class_path": "lit_factory.stages.lm_head.ChunkedLogits",
                                    "init_args": {"chunk_tokens": 16}})]:
        directory = tmp_path / name
        directory.mkdir()
        assert main(["fit", "--config", sft_recipe(directory, base, head)]) == 0
        run = directory / "run" / "version_0"
        with open(run / "metrics.csv") as file:
            losses = [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]
        assert f"lit_factory.stages.lm_head.{head['class_path'].rsplit('.', 1)[1]}" in (run / "hparams.yaml").read_text()
        runs[name] = losses, load_file(run / "model.safetensors")
    assert len(runs["full"][0]) == 3
    assert runs["chunked"][0] == pytest.approx(runs["full"][0], rel=1e-5)
    for key, value in runs["full"][1].items():
        torch.testing.assert_close(runs["chunked"][1][key], value, rtol=1e-5, atol=1e-6, msg=key)

    bad = sft_recipe(tmp_path, base, {"class_path": "lit_factory.stages.lm_head.ChunkedLogits",
                                      "init_args": {"chunk_tokens": 0}})
    capsys.readouterr()
    assert main(["fit", "--config", bad]) == 2
    assert "loss_head.init_args.chunk_tokens: must be at least 1" in capsys.readouterr().err
