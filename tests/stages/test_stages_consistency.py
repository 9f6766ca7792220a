"""What every shipped stage shares: its checkpoint records every argument it was made with, the same way, as plain
values; and the paired-reward metrics of the preference stages, against their formulas."""

import inspect
from functools import partial

import lightning.pytorch as pl
import pytest
import torch

import lit_factory.stages as stages
from lit_factory.model import LoRA, ModelArgs
from lit_factory.stages.base import Stage
from lit_factory.stages.preference import reward_metrics
from tiny_models import SPARROW, TINY

SHIPPED = [name for name in stages.__all__ if name != "Stage"]


def init_arguments(cls: type) -> set[str]:
    """The names of the arguments of every ``__init__`` in ``cls``'s stage class chain."""
    names = set()
    for klass in cls.__mro__:
        if issubclass(klass, Stage) and "__init__" in vars(klass):
            for parameter in inspect.signature(klass.__init__).parameters.values():
                if parameter.name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    names.add(parameter.name)
    return names


@pytest.mark.parametrize("name", SHIPPED)
def test_a_stage_checkpoint_records_all_its_init_arguments_as_plain_values(name, tmp_path):
    cls = getattr(stages, name)
    (tmp_path / "reward").mkdir()
    extra = {"reward_model": str(tmp_path / "reward"), "ppo_epochs": 2} if name == "PPO" else {}
    # The optimizer as jsonargparse hands it over from `optimizer: {class_path: torch.optim.SGD, init_args: ...}`.
    stage = cls(model=ModelArgs(config=dict(TINY), tokenizer=SPARROW), finetuning=LoRA(r=4),
                optimizer=partial(torch.optim.SGD, lr=0.5), warmup_steps=3, **extra)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(stage)
    Stage.configure_model(stage)  # the tiny LoRA model, for the stages' own checkpoint hooks (no reward model here)
    trainer.save_checkpoint(tmp_path / "stage.ckpt")
    recorded = torch.load(tmp_path / "stage.ckpt", weights_only=True)["hyper_parameters"]  # plain values only

    assert init_arguments(cls) - set(recorded) == set()
    assert recorded["warmup_steps"] == 3
    assert recorded["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.5}}
    assert recorded["finetuning"]["class_path"] == "lit_factory.model.adapters.LoRA"
    assert recorded["finetuning"]["init_args"]["r"] == 4
    assert recorded["model"]["config"] == TINY
    if name == "PPO":
        assert recorded["ppo_epochs"] == 2 and recorded["reward_model"] == str(tmp_path / "reward")
    assert dict(stage.hparams_initial) == recorded  # what the loggers write to hparams.yaml, the same


def test_a_user_subclass_argument_is_recorded_without_a_line_of_its_own():
    class Weighted(stages.SFT):
        def __init__(self, weight: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.weight = weight

    stage = Weighted(weight=0.25, model=ModelArgs(config=dict(TINY), tokenizer=SPARROW))
    assert stage.hparams["weight"] == 0.25 and stage.hparams["lr_schedule"] == "cosine"


def test_reward_metrics_are_the_means_accuracy_and_margin_of_the_pairs():
    chosen = torch.tensor([1.0, -0.5, 2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.5, 0.5, -1.0, 0.0])
    metrics = reward_metrics(chosen * 2, rejected * 2)
    expected = {"rewards/chosen": 1.25, "rewards/rejected": 0.0, "rewards/accuracy": 0.5, "rewards/margin": 1.25}
    assert {name: float(value) for name, value in metrics.items()} == pytest.approx(expected)
    assert not any(value.requires_grad for value in metrics.values())  # logged values, not part of the loss
    assert set(reward_metrics(chosen, rejected, compared="")) == {"rewards/chosen", "rewards/rejected", "accuracy",
                                                                  "margin"}  # the reward model's names
