"""The sides that benchmarks/overhead.py and benchmarks/throughput.py compare: one LoRA SFT run each of lit-factory
(the SFT stage under a Lightning Trainer), a plain transformers + PEFT + torch.optim loop and ``transformers.Trainer``,
on the same random model, batches, optimizer and learning rate.

Every side runs in a process of its own (:func:`run_interleaved` starts them, alternating the order from repeat to
repeat) so that peak memory (CUDA allocator peak, or the process's max RSS on CPU) is its own. Each side reports what
it really did, for the caller to compare: a fingerprint of the token ids its model was fed, its optimizer's settings,
``model.is_gradient_checkpointing`` and how often decoder layer 0 ran per step (2 when gradient checkpointing really
recomputes the layer in backward, 1 when it is off).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "lit_factory" / "assets" / "sparrow-tokenizer")
SHAPES = {
    "tiny": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=8000, max_position_embeddings=1024),
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}
LR = 1e-4
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, which lit-factory's `partial(AdamW, lr=...)` keeps


def add_run_arguments(parser, sides: list[str]) -> None:
    """The options every side takes (the parent passes them on to each side's process)."""
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default 4)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048, 256 for tiny)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs of each side (median reported)")
    parser.add_argument("--side", choices=sides, help=argparse.SUPPRESS)


def settle(args, gradient_checkpointing: bool | None = None):
    """Defaults that follow from the device and the shape: a GPU runs bf16 (a CPU fp32); no ``--shape`` means the
    7B shape on a GPU and the tiny one elsewhere; the large shape runs 4 x 2048 with gradient checkpointing
    (``gradient_checkpointing`` overrides that rule)."""
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.bf16 = args.device == "cuda"
    args.shape = args.shape or ("llama2-7b" if args.device == "cuda" else "tiny")
    big = args.shape != "tiny"
    args.batch = args.batch or 4
    args.seq = args.seq or (2048 if big else 256)
    args.gradient_checkpointing = big if gradient_checkpointing is None else gradient_checkpointing
    return args


def make_batches(args, vocab_size: int):
    """Fixed-shape batches: random tokens, loss on the second half of each sequence (the 'response')."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab_size, (args.batch, args.seq), generator=generator)
        labels = ids.clone()
        labels[:, : args.seq // 2] = -100
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Probe:
    """Watches a (PEFT-wrapped) causal LM: a fingerprint of every batch of token ids fed to its embeddings (kept on
    the device, so it adds no synchronisation), and the forward calls of decoder layer 0's attention."""

    def __init__(self, model) -> None:
        self.model = model
        self.layer_calls = 0
        self.fingerprint = None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.get_input_embeddings().register_forward_pre_hook(self._fingerprint)
        # On the layer's attention: transformers checkpoints the layer's `forward`, so the layer's own hooks stay
        # outside the recomputation; a pre-hook, since the recomputation stops once backward has what it needs.
        base.model.layers[0].self_attn.register_forward_pre_hook(self._count)

    def _fingerprint(self, module, inputs) -> None:
        import torch

        ids = inputs[0].long()
        weights = torch.arange(1, ids.numel() + 1, device=ids.device).view_as(ids) % 7919
        value = (ids * weights).sum()
        self.fingerprint = value if self.fingerprint is None else self.fingerprint + value

    def _count(self, module, inputs) -> None:
        self.layer_calls += 1

    def report(self, steps: int, optimizer) -> dict:
        return {"batches": f"{int(self.fingerprint):x}", "layer0_calls_per_step": self.layer_calls / steps,
                "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "is_gradient_checkpointing": bool(self.model.is_gradient_checkpointing),
                "optimizer": describe_optimizer(optimizer)}


def describe_optimizer(optimizer) -> str:
    """Class, hyper-parameters and parameter count of each non-empty group (lit-factory wraps nothing; Trainer's
    AcceleratedOptimizer wraps the torch optimizer)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    groups = []
    for group in optimizer.param_groups:
        if group["params"]:
            groups.append(f"lr={group['lr']:g} weight_decay={group['weight_decay']:g} betas={tuple(group['betas'])} "
                          f"eps={group['eps']:g} tensors={len(group['params'])} "
                          f"numel={sum(p.numel() for p in group['params'])}")
    return f"{type(optimizer).__name__}(" + "; ".join(groups) + ")"


def build_peft_model(args, gradient_checkpointing: bool):
    """The plain loop's and Trainer's model: transformers ``from_config`` (seeded as lit-factory seeds it) with
    PEFT LoRA on every linear layer but the head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device(args.device)
    options = dict(SHAPES[args.shape])
    torch.manual_seed(args.seed)
    with device:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options),
                                                 dtype=torch.bfloat16 if args.bf16 else torch.float32,
                                                 attn_implementation="sdpa")
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def timed_result(args, elapsed: float, device, loss: float, probe: Probe, optimizer) -> dict:
    tokens = (args.steps - args.warmup) * args.batch * args.seq
    return {"tokens_per_sec": tokens / elapsed, "peak_gb": peak_memory_gb(device), "last_loss": loss,
            **probe.report(args.steps, optimizer)}


def run_plain(args) -> dict:
    """The reference: transformers + PEFT + torch.optim in a hand-written loop."""
    import torch

    device = torch.device(args.device)
    model = build_peft_model(args, args.gradient_checkpointing)
    probe = Probe(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                                  weight_decay=WEIGHT_DECAY)
    model.train()
    started = None
    for step, batch in enumerate(make_batches(args, SHAPES[args.shape]["vocab_size"])):
        if step == args.warmup:
            synchronize(device)
            started = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return timed_result(args, time.perf_counter() - started, device, float(loss), probe, optimizer)


def run_trainer(args) -> dict:
    """``transformers.Trainer`` as its users run it (it turns gradient checkpointing on itself), fed the same
    batches in order, with the same AdamW, constant learning rate and no gradient clipping as the other sides."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    device = torch.device(args.device)
    model = build_peft_model(args, gradient_checkpointing=False)
    probe = Probe(model)
    batches = make_batches(args, SHAPES[args.shape]["vocab_size"])
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, training_args, state, control, **kwargs):
            if state.global_step == args.warmup:
                synchronize(device)
                self.started = time.perf_counter()

        def on_step_end(self, training_args, state, control, **kwargs):
            if state.global_step == args.steps:
                synchronize(device)
                self.elapsed = time.perf_counter() - self.started

    class FixedBatches(Trainer):
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None)

        def compute_loss(self, *compute_args, **kwargs):
            loss = super().compute_loss(*compute_args, **kwargs)
            losses[:] = [loss.detach()]
            return loss

    timer = Timer()
    with tempfile.TemporaryDirectory() as run_dir:
        training_args = TrainingArguments(
            output_dir=run_dir, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=LR,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=WEIGHT_DECAY, optim="adamw_torch",
            max_grad_norm=0.0, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10, save_strategy="no",
            report_to="none", seed=args.seed, use_cpu=device.type == "cpu", dataloader_num_workers=0)
        trainer = FixedBatches(model=model, args=training_args, callbacks=[timer])
        trainer.train()
    return timed_result(args, timer.elapsed, device, float(losses[-1]), probe, trainer.optimizer)


def run_ours(args, model_dir: str | None = None, data=None) -> dict:
    """lit-factory: the SFT stage with LoRA, trained by a Lightning Trainer with a TensorBoard logger and the progress
    bar `lit-factory fit` adds (``StepProgressBar``). With ``model_dir``, that saved model quantized to 4-bit NF4
    (QLoRA) instead of a random one from the shape's config; with ``data`` (a LightningDataModule), its batches
    instead of the fixed random ones. Tokens/s counts the timed batches' non-padding tokens (``attention_mask``) and,
    apart, their supervised ones (labels other than -100)."""
    import lightning.pytorch as pl
    import torch
    from functools import partial
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_factory.callbacks import StepProgressBar
    from lit_factory.model import LoRA, ModelArgs
    from lit_factory.stages import SFT

    device = torch.device(args.device)

    class Timer(pl.Callback):
        tokens = supervised = 0

        def on_train_start(self, trainer, pl_module):
            self.probe = Probe(pl_module.model)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                synchronize(device)
                self.started = time.perf_counter()
            if batch_idx >= args.warmup:  # device tensors: counting adds no synchronisation
                self.tokens = self.tokens + batch["attention_mask"].sum()
                self.supervised = self.supervised + (batch["labels"] != -100).sum()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == args.steps - 1:
                synchronize(device)
                self.elapsed = time.perf_counter() - self.started

    class Batches(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(make_batches(args, SHAPES[args.shape]["vocab_size"]), batch_size=None)

    source = dict(path=model_dir, quantization="nf4") if model_dir else dict(config=dict(SHAPES[args.shape]))
    stage = SFT(ModelArgs(**source, tokenizer=TOKENIZER, dtype="bfloat16" if args.bf16 else "float32",
                          attn_implementation=getattr(args, "attn", None) or "sdpa",
                          gradient_checkpointing=args.gradient_checkpointing),
                LoRA(r=args.rank, alpha=2 * args.rank), partial(torch.optim.AdamW, lr=LR), lr_schedule="constant")
    stage.on_train_end = lambda: None  # the saved adapter is not part of the measurement
    torch.manual_seed(args.seed)
    timer = Timer()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = pl.Trainer(accelerator=device.type, devices=1, max_steps=args.steps,
                             precision="bf16-mixed" if args.bf16 else "32-true",
                             logger=TensorBoardLogger(run_dir, name="bench"), log_every_n_steps=10,
                             enable_checkpointing=False, enable_model_summary=False, default_root_dir=run_dir,
                             callbacks=[timer, StepProgressBar(summary=False)])
        trainer.fit(stage, datamodule=data or Batches())
    return {"tokens_per_sec": int(timer.tokens) / timer.elapsed,
            "supervised_tokens_per_sec": int(timer.supervised) / timer.elapsed, "peak_gb": peak_memory_gb(device),
            "last_loss": float(trainer.callback_metrics["train/loss"]),
            **timer.probe.report(args.steps, trainer.optimizers[0])}


def run_interleaved(script: str, argv: list[str], sides: list[str], repeats: int) -> dict[str, list[dict]]:
    """Run ``script argv --side S`` for every side, ``repeats`` times, reversing the order every other repeat (so
    that load from other processes on a shared machine falls on all sides alike); each prints its result as JSON on
    its last line."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(repeats):
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            done = subprocess.run([sys.executable, script, *argv, "--side", side], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if done.returncode != 0:
                sys.exit(f"{side} run failed:\n{done.stderr[-3000:]}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def medians(runs: list[dict]) -> dict:
    """The median of each numeric field over a side's repeats; other fields from the first repeat (the caller checks
    they agree)."""
    return {key: statistics.median(run[key] for run in runs)
            if isinstance(value, (int, float)) and not isinstance(value, bool) else value
            for key, value in runs[0].items()}
