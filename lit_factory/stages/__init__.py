"""Training stages: LightningModules over the shared model builder, one file per objective.

Names resolve lazily so that `import lit_factory.stages` stays cheap until a stage is used. A recipe may name any
``Stage`` subclass by its import path (``model.class_path: mypkg.MyDPO``); these are the ones lit-factory ships.
"""

_STAGES = {"Stage": "base", "SFT": "sft", "PreTrain": "pretrain"}
_STAGES.update({"RewardModel": "reward", "DPO": "dpo", "KTO": "kto", "ORPO": "orpo", "SimPO": "simpo"})
_STAGES.update({"PPO": "ppo", "DFT": "dft"})


def __getattr__(name: str):
    if name in _STAGES:
        import importlib

        return getattr(importlib.import_module(f"lit_factory.stages.{_STAGES[name]}"), name)
    raise AttributeError(f"module 'lit_factory.stages' has no attribute {name!r}")


__all__ = list(_STAGES)


def shipped_stages() -> list[str]:
    """The names of the stages lit-factory ships (``SFT``, ``DPO``...), the base ``Stage`` left out."""
    return [name for name in _STAGES if name != "Stage"]
