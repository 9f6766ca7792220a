"""Train mode during fit: a pre-trained model (loaded in eval mode) trains with dropout and gradient checkpointing
on and validates in eval mode; DPO and PPO reference (and reward) passes score in eval mode; checkpointing keeps
fewer activations (counted as bytes of tensors saved for backward, so the check is deterministic)."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.model import LoRA, ModelArgs
from lit_factory.model.layers import decoder_layers
from lit_factory.stages import DPO, SFT
from tiny_models import DEMO, quiet_trainer, save_tiny_base, sparrow_data


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


class ModeProbe(pl.Callback):
    """Records, at each training and validation batch, whether the decoder layers are in train mode and whether two
    forwards of the same batch differ (dropout active)."""

    def __init__(self):
        self.train_modes, self.val_modes, self.train_outputs_differ, self.val_outputs_differ = [], [], [], []

    def _probe(self, stage, batch, modes, differ):
        layers = decoder_layers(stage.model)[1]
        modes.append({layer.training for layer in layers})
        with torch.no_grad():
            first, second = (stage(batch["input_ids"], attention_mask=batch["attention_mask"]).logits for _ in "12")
        differ.append(not torch.equal(first, second))

    def on_train_batch_start(self, trainer, stage, batch, batch_idx):
        if "input_ids" in batch:
            self._probe(stage, batch, self.train_modes, self.train_outputs_differ)

    def on_validation_batch_start(self, trainer, stage, batch, batch_idx, dataloader_idx=0):
        if "input_ids" in batch:
            self._probe(stage, batch, self.val_modes, self.val_outputs_differ)


def test_pretrained_model_trains_in_train_mode_and_validates_in_eval_mode(base_dir, tmp_path):
    stage = SFT(ModelArgs(path=str(base_dir)), LoRA(r=4, dropout=0.5), partial(torch.optim.AdamW, lr=1e-3))
    probe = ModeProbe()
    quiet_trainer(tmp_path, 3, callbacks=[probe], val_check_interval=1, limit_val_batches=1).fit(
        stage, datamodule=sparrow_data(stage.tokenizer, val_size=0.25))
    assert probe.train_modes == [{True}] * 3
    # LoRA dropout acts during training (from step 2: before the first update B = 0 and the adapter adds nothing).
    assert all(probe.train_outputs_differ[1:])
    assert probe.val_modes and all(modes == {False} for modes in probe.val_modes)
    assert not any(probe.val_outputs_differ)  # and not during validation


@pytest.fixture(scope="module")
def dropout_base_dir(base_dir, tmp_path_factory) -> Path:
    """The tiny base with attention dropout, so that a reference pass in train mode would be random."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("dropout-base")
    shutil.copytree(base_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, attention_dropout=0.5)))
    return folder


class ReferenceProbe(pl.Callback):
    def __init__(self):
        self.policy_modes, self.policy_differs, self.reference_same = [], [], []

    def on_train_batch_start(self, trainer, stage, batch, batch_idx):
        self.policy_modes.append({layer.training for layer in decoder_layers(stage.model)[1]})
        with torch.no_grad():
            first, second = (stage.policy_logps(batch)[0] for _ in "12")
        self.policy_differs.append(not torch.equal(first, second))
        self.reference_same.append(torch.equal(stage.reference_logps(batch), stage.reference_logps(batch)))


@pytest.mark.parametrize("reference", ["copy", "auto"])
def test_dpo_reference_scores_in_eval_mode_while_the_policy_trains(dropout_base_dir, tmp_path, reference):
    from lit_factory.model import Freeze
    from test_stages_preference import Batches, pairwise_batch

    finetuning = Freeze(trainable_layers=1) if reference == "copy" else LoRA(r=4)
    stage = DPO(model=ModelArgs(path=str(dropout_base_dir)), finetuning=finetuning,
                optimizer=partial(torch.optim.AdamW, lr=1e-3), reference=reference)
    probe = ReferenceProbe()
    quiet_trainer(tmp_path, 2, callbacks=[probe]).fit(stage, datamodule=Batches([pairwise_batch(2, 0)] * 2))
    assert stage.reference_source == ("copy" if reference == "copy" else "adapter_disabled")
    assert probe.policy_modes == [{True}, {True}] and all(probe.policy_differs)
    assert all(probe.reference_same)


class SavedBytes(pl.Callback):
    """Counts the bytes autograd keeps for backward during training steps (outside checkpointed regions:
    non-reentrant checkpointing installs its own hooks inside them and keeps nothing), and how often the first
    decoder layer's MLP runs forward (counted by wrapping its ``forward``: module hooks do not fire again when
    backward recomputes a checkpointed layer)."""

    def __init__(self):
        self.bytes, self.layer_calls = 0, 0
        self._hooks = None

    def _pack(self, tensor):
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def on_train_batch_start(self, trainer, stage, batch, batch_idx):
        mlp = decoder_layers(stage.model)[1][0].mlp
        if "forward" not in vars(mlp):
            def counted_forward(*args, _forward=mlp.forward, **kwargs):
                self.layer_calls += 1
                return _forward(*args, **kwargs)

            mlp.forward = counted_forward
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()

    def on_train_batch_end(self, trainer, stage, outputs, batch, batch_idx):
        self._hooks.__exit__(None, None, None)


def checkpointing_run(base_dir, tmp_path, enabled: bool) -> SavedBytes:
    stage = SFT(ModelArgs(path=str(base_dir), gradient_checkpointing=enabled), LoRA(r=4),
                partial(torch.optim.AdamW, lr=1e-3))
    meter = SavedBytes()
    quiet_trainer(tmp_path, 2, callbacks=[meter]).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    return meter


def test_gradient_checkpointing_recomputes_layers_and_keeps_fewer_activations(base_dir, tmp_path):
    plain = checkpointing_run(base_dir, tmp_path / "plain", enabled=False)
    checkpointed = checkpointing_run(base_dir, tmp_path / "checkpointed", enabled=True)
    assert plain.layer_calls == 2  # one forward per step
    assert checkpointed.layer_calls == 4  # forward, then again in backward
    assert checkpointed.bytes < 0.6 * plain.bytes, (checkpointed.bytes, plain.bytes)


def test_ppo_reference_and_reward_score_in_eval_mode_while_the_policy_trains(dropout_base_dir, tmp_path):
    from lit_factory.stages import PPO, RewardModel
    from test_stages_preference import Batches, pairwise_batch

    reward = RewardModel(ModelArgs(path=str(dropout_base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-3))
    quiet_trainer(tmp_path / "reward", 1).fit(reward, datamodule=Batches([pairwise_batch(2, 0)]))
    stage = PPO(ModelArgs(path=str(dropout_base_dir)), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-3),
                reward_model=str(tmp_path / "reward"), max_new_tokens=2, mini_batch_size=2, ppo_epochs=1)
    scores = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, stage, batch, batch_idx):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            assert {layer.training for layer in decoder_layers(stage.model)[1]} == {True}
            scores.append([(stage.reference_logprobs(ids, mask, ids.size(1) - 2), stage.reward_scores(ids, mask))
                           for _ in "12"])

    data = DataModule(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=stage.tokenizer, template="chatml",
                      cutoff_len=64, batch_size=2, shuffle=False, objective="prompt")
    quiet_trainer(tmp_path / "ppo", 2, callbacks=[Probe()]).fit(stage, datamodule=data)
    assert len(scores) == 2
    for (reference, reward_score), (reference_again, reward_again) in scores:
        assert torch.equal(reference, reference_again) and torch.equal(reward_score, reward_again)
