"""Preference stages through the Python API: where DPO's reference comes from (adapter disabled, frozen copy,
precomputed table), the reward model's saved adapter + value head reloading as a second adapter, bad batches."""

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.errors import LitFactoryError
from lit_factory.model import Full, LoRA, ModelArgs
from lit_factory.stages import DPO, KTO, RewardModel
from tiny_models import SPARROW, TINY, quiet_trainer, save_tiny_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def pairwise_batch(pairs: int, seed: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """n chosen rows ending in tokens 40..45, then the same prompts ending in 60..65; labels on the reply only."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for reply in ([40, 41, 42, 43, 44, 45], [60, 61, 62, 63, 64, 65]):
        for pair in range(pairs):
            prompt = torch.randint(100, 200, (3 + pair % 3,), generator=torch.Generator().manual_seed(seed + pair))
            rows.append((prompt.tolist(), reply))
    del generator
    length = max(len(p) + len(r) for p, r in rows)
    batch = {"input_ids": torch.full((len(rows), length), pad_id), "attention_mask": torch.zeros(len(rows), length,
             dtype=torch.long), "labels": torch.full((len(rows), length), -100)}
    for i, (prompt, reply) in enumerate(rows):
        ids = prompt + reply
        batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, :len(ids)] = 1
        batch["labels"][i, len(prompt):len(ids)] = torch.tensor(reply)
    return batch


class Batches(pl.LightningDataModule):
    """Ready-made batches (what the data module's pairwise collator produces), in a fixed order."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None, shuffle=False)


class Recorder(pl.Callback):
    def __init__(self):
        self.losses, self.metrics = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


trainer = quiet_trainer


def plain_logps(model, batch) -> torch.Tensor:
    """Summed log-probabilities of the labelled tokens, with a plain transformers forward."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = torch.zeros(len(logits))
    for row in range(len(logits)):
        for t in range(1, logits.size(1)):
            if batch["labels"][row, t] != -100:
                total[row] += torch.log_softmax(logits[row, t - 1], -1)[batch["labels"][row, t]]
    return total


def test_lora_dpo_reference_is_the_base_model_with_the_adapter_disabled(base_dir):
    from transformers import AutoModelForCausalLM

    stage = DPO(model=ModelArgs(path=str(base_dir)), finetuning=LoRA(r=4))
    stage.configure_model()
    with torch.no_grad():  # a trained-looking adapter, so that policy and reference differ
        for name, parameter in stage.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    batch = pairwise_batch(2, seed=0, pad_id=stage.tokenizer.pad_token_id)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()

    assert stage.reference_source == "adapter_disabled" and stage.reference_model is None
    assert sum(p.numel() for p in stage.parameters()) < 1.1 * sum(p.numel() for p in base.parameters())
    torch.testing.assert_close(stage.reference_logps(batch), plain_logps(base, batch), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(stage.policy_logps(batch)[0], plain_logps(base, batch), atol=1e-2)
    assert stage.policy_logps(batch)[0].requires_grad  # the adapter is back on after the reference pass


def test_full_dpo_precomputed_reference_trains_exactly_like_a_frozen_copy(base_dir, tmp_path):
    batches = [pairwise_batch(2, seed=s) for s in (0, 10, 20)]
    runs = {}
    for reference in ("copy", "precomputed"):
        torch.manual_seed(0)
        stage = DPO(model=ModelArgs(path=str(base_dir)), finetuning=Full(), reference=reference, beta=0.5,
                    optimizer=partial(torch.optim.SGD, lr=0.5))
        recorder = Recorder()
        trainer(tmp_path / reference, 6, callbacks=[recorder], max_epochs=2,
                enable_checkpointing=reference == "precomputed").fit(stage, datamodule=Batches(batches))
        runs[reference] = (stage, recorder)
    copy_stage, copy_record = runs["copy"]
    table_stage, table_record = runs["precomputed"]
    assert copy_stage.reference_model is not None and table_stage.reference_model is None
    assert len(table_stage.precomputed_logps) == 3 * 4  # every row of every batch, looked up again in epoch 2
    torch.testing.assert_close(torch.tensor(table_record.losses), torch.tensor(copy_record.losses), rtol=0, atol=1e-5)
    # A resumed run must not rescore rows with trained weights: the table travels in the checkpoint.
    checkpoint = torch.load(next((tmp_path / "precomputed").rglob("*.ckpt")), weights_only=True)
    assert checkpoint["reference_logps"] == table_stage.precomputed_logps
    resumed = DPO(model=ModelArgs(path=str(base_dir)), finetuning=Full(), reference="precomputed", beta=0.5,
                  optimizer=partial(torch.optim.SGD, lr=0.5))
    trainer(tmp_path / "resumed", 8, max_epochs=3).fit(
        resumed, datamodule=Batches(batches), ckpt_path=str(next((tmp_path / "precomputed").rglob("*.ckpt"))))
    assert resumed.precomputed_logps == table_stage.precomputed_logps
    # The policy moved away from the reference, and the chosen replies gained on the rejected ones.
    assert copy_record.losses[-1] < copy_record.losses[0]
    assert copy_record.metrics[-1]["train/rewards/margin"] > 0 and "train/rewards/accuracy" in copy_record.metrics[-1]


def test_reward_model_saves_an_adapter_and_value_head_that_load_as_a_second_adapter(base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lit_factory.model.value_head import last_hidden_states, last_token_values, load_value_head

    torch.manual_seed(0)
    stage = RewardModel(model=ModelArgs(path=str(base_dir)), finetuning=LoRA(r=4),
                        optimizer=partial(torch.optim.AdamW, lr=1e-2))
    recorder = Recorder()
    batches = [pairwise_batch(2, seed=s) for s in (0, 10, 20, 30)]
    trainer(tmp_path, 12, callbacks=[recorder], max_epochs=3, enable_checkpointing=True).fit(
        stage, datamodule=Batches(batches))
    assert recorder.losses[-1] < recorder.losses[0] and recorder.metrics[-1]["train/accuracy"] == 1.0
    assert {"adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"} <= {
        p.name for p in tmp_path.iterdir()}
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert "model.value_head.summary.weight" in checkpoint["state_dict"]  # adapter-only checkpoints keep the head

    # A PPO-style setup: a policy adapter on the base, the reward adapter loaded beside it, the head on top.
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=2, target_modules="all-linear"))
    policy.load_adapter(str(tmp_path), adapter_name="reward")
    policy.set_adapter("reward")
    head = load_value_head(tmp_path)
    batch = pairwise_batch(3, seed=99)
    stage.eval()
    with torch.no_grad():
        reloaded = last_token_values(head(last_hidden_states(policy.eval(), batch["input_ids"], batch["attention_mask"])),
                                     batch["attention_mask"])
        torch.testing.assert_close(reloaded, stage.scores(batch["input_ids"], batch["attention_mask"]))
    # The saved folder is a plain PEFT adapter: the head is not mixed into it.
    assert not any("value_head" in key for key in policy.state_dict())


def test_batches_of_the_wrong_kind_give_one_line_errors():
    stage = DPO(model=ModelArgs(config=TINY, tokenizer=SPARROW))
    supervised = {key: value[:3] for key, value in pairwise_batch(2, seed=0).items()}
    with pytest.raises(LitFactoryError, match="2n rows"):
        stage.loss(supervised)
    kto = KTO(model=ModelArgs(config=TINY, tokenizer=SPARROW))
    with pytest.raises(LitFactoryError, match="kto_tags.*objective 'kto'"):
        kto.loss(pairwise_batch(2, seed=0))
    with pytest.raises(LitFactoryError, match="label_smoothing"):
        DPO(model=ModelArgs(config=TINY, tokenizer=SPARROW), loss_type="ipo", label_smoothing=0.1)
