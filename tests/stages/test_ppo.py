"""The PPO stage: one copy of the base weights, outputs loadable with plain PEFT, one-line errors, and a toy RLHF
run that learns (SFT -> reward model -> PPO, all through the stages' Python API on a tiny model)."""

import json
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import LoRA, ModelArgs
from lit_factory.stages import PPO, SFT, RewardModel
from tiny_models import SPARROW, TINY


def fit(stage, data, steps, root, callbacks=()):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(stage, datamodule=data)
    return trainer


@pytest.fixture(scope="module")
def yes_no(tmp_path_factory):
    """Questions answered 'Yes.' or 'No.' (SFT), the same questions as preference pairs preferring 'Yes.', and a
    tiny model SFT-ed on the answers so that it says either, plus a LoRA reward model trained on the pairs."""
    root = tmp_path_factory.mktemp("rlhf")
    questions = [row["instruction"] for row in json.loads(Path("lit_factory/assets/demo/sparrow_sft.json").read_text())]
    data = root / "data"
    data.mkdir()
    sft_rows = [{"instruction": q, "output": "Yes." if i % 2 else "No."} for i, q in enumerate(questions)]
    (data / "yn_sft.json").write_text(json.dumps(sft_rows))
    (data / "yn_pairs.json").write_text(json.dumps([{"instruction": q, "chosen": "Yes.", "rejected": "No."}
                                                    for q in questions]))
    (data / "yn_text.jsonl").write_text("".join(json.dumps({"text": q}) + "\n" for q in questions))
    (data / "dataset_info.json").write_text(json.dumps({
        "yn_sft": {"file_name": "yn_sft.json"},
        "yn_text": {"file_name": "yn_text.jsonl", "columns": {"prompt": "text"}},
        "yn_pairs": {"file_name": "yn_pairs.json", "ranking": True,
                     "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
    }))

    torch.manual_seed(0)
    sft = SFT(ModelArgs(config=dict(TINY), tokenizer=SPARROW), None, partial(torch.optim.AdamW, lr=3e-3))
    fit(sft, DataModule("yn_sft", str(data), sft.tokenizer, template="chatml", cutoff_len=64, batch_size=8),
        80, root / "sft")
    base = root / "sft"  # fit() saved the full model + tokenizer here

    reward = RewardModel(ModelArgs(path=str(base)), LoRA(r=8, alpha=16), partial(torch.optim.AdamW, lr=3e-3))
    fit(reward, DataModule("yn_pairs", str(data), reward.tokenizer, objective="pairwise", template="chatml",
                           cutoff_len=64, batch_size=8), 30, root / "reward")
    return dict(data=data, base=base, reward=root / "reward")


def make_ppo(setup, **options):
    settings = dict(reward_model=str(setup["reward"]), max_new_tokens=4, mini_batch_size=8, ppo_epochs=2,
                    init_kl_coef=0.05, temperature=1.0)
    settings.update(options)
    return PPO(ModelArgs(path=str(setup["base"])), LoRA(r=8, alpha=16), partial(torch.optim.AdamW, lr=2e-3),
               **settings)


def prompts(stage, setup, batch_size=16):
    return DataModule("yn_sft", str(setup["data"]), stage.tokenizer, objective="prompt", template="chatml",
                      cutoff_len=64, batch_size=batch_size)


def storage_bytes(tensors) -> int:
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(unique.values())


def test_policy_reference_reward_and_critic_share_one_copy_of_the_base(yes_no):
    from transformers import AutoModelForCausalLM

    stage = make_ppo(yes_no)
    stage.configure_model()
    base = AutoModelForCausalLM.from_pretrained(yes_no["base"])
    base_bytes = storage_bytes(base.parameters())
    names = dict(stage.named_parameters())
    shared = [p for n, p in names.items() if "lora_" not in n and "value_head" not in n and "reward_head" not in n]
    assert storage_bytes(shared) == base_bytes  # a second copy would double this
    adapters = {n.split("lora_A.")[1].split(".")[0] for n in names if "lora_A." in n}
    assert adapters == {"default", "reward"}
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert trainable and all(".default." in n or "value_head" in n for n in trainable)


@pytest.mark.slow
def test_toy_rlhf_run_raises_the_reward_and_saves_a_peft_policy(yes_no, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    class Rewards(pl.Callback):
        def __init__(self):
            self.rewards, self.kls = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rewards.append(float(trainer.callback_metrics["ppo/reward"]))
            self.kls.append(float(trainer.callback_metrics["ppo/kl"]))

    torch.manual_seed(0)
    stage = make_ppo(yes_no)
    record = Rewards()
    # 20 batches of 8 prompts, 2 updates each (ppo_epochs=2, one minibatch): max_steps counts updates.
    fit(stage, prompts(stage, yes_no, batch_size=8), 40, tmp_path, [record])
    assert len(record.rewards) == 20
    first, last = sum(record.rewards[:5]) / 5, sum(record.rewards[-5:]) / 5
    assert last > first + 0.5, record.rewards
    assert all(abs(kl) < 50 for kl in record.kls)

    saved = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"} <= saved
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as weights:
        assert not any("reward" in key for key in weights.keys())
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(yes_no["base"]), tmp_path).eval()
    ids = stage.tokenizer("Who are you?", return_tensors="pt")
    with torch.no_grad():
        ours = stage.model.get_base_model()(**ids).logits
        theirs = policy(**ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_bad_reward_model_folders_are_one_line_errors(yes_no, tmp_path):
    import shutil

    no_head = tmp_path / "no_head"
    shutil.copytree(yes_no["reward"], no_head)
    (no_head / "value_head.safetensors").unlink()
    with pytest.raises(LitFactoryError, match="value_head.safetensors"):
        make_ppo(yes_no, reward_model=str(no_head)).configure_model()

    other_base = tmp_path / "other_base"
    other = RewardModel(ModelArgs(config=dict(TINY, hidden_size=32), tokenizer=SPARROW), LoRA(r=2))
    other.configure_model()
    other.model.get_base_model().save_pretrained(other_base)
    other_reward = RewardModel(ModelArgs(path=str(other_base), tokenizer=SPARROW), LoRA(r=2))
    other_reward.configure_model()
    other_reward.save_pretrained(tmp_path / "other_reward")
    with pytest.raises(LitFactoryError, match="same base"):
        make_ppo(yes_no, reward_model=str(tmp_path / "other_reward")).configure_model()

    with pytest.raises(LitFactoryError, match="LoRA"):
        PPO(ModelArgs(path=str(yes_no["base"])), None, reward_model=str(yes_no["reward"]))


def run_ppo_recipe(yes_no, tmp_path, dataset):
    import subprocess
    import sys

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(json.dumps({
        "trainer": {"precision": "32-true", "accelerator": "cpu", "max_steps": 4, "log_every_n_steps": 1,
                    "logger": {"init_args": {"save_dir": str(tmp_path)}}},
        "model": {"init_args": {"model": {"path": str(yes_no["base"])}, "reward_model": str(yes_no["reward"]),
                                "max_new_tokens": 4, "mini_batch_size": 4, "ppo_epochs": 1}},
        "data": {"init_args": {"dataset_dir": str(yes_no["data"]), "dataset": [dataset], "template": "chatml",
                               "batch_size": 4, "cutoff_len": 64}},
    }))
    return subprocess.run([sys.executable, "-m", "lit_factory", "fit", "--config", "recipes/ppo/lora.yaml",
                           "--config", str(overlay)], capture_output=True, text=True, timeout=600)


def test_ppo_recipe_logs_the_rlhf_metrics(yes_no, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_ppo_recipe(yes_no, tmp_path, "yn_sft")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ppo-lora" / "version_0"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"ppo/reward", "ppo/kl", "ppo/policy_loss", "ppo/value_loss", "ppo/clip_fraction", "ppo/entropy",
            "ppo/response_length", "train/lr"} <= scalars
    assert events.Tags()["tensors"] or events.Tags().get("text")  # the rollouts table
    assert (run_dir / "value_head.safetensors").is_file()


def test_ppo_on_plain_text_data_is_a_one_line_error(yes_no, tmp_path):
    result = run_ppo_recipe(yes_no, tmp_path, "yn_text")  # a pre-training corpus: no prompt/response rows
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("lit-factory: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
