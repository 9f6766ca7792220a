"""Optimizer-side pieces shared by the stages: the optimizer factory (LoRA+, GaLore, APOLLO, BAdam, Adam-mini,
Muon) and LR schedules.

Names resolve lazily so that `import lit_factory.optim` stays free of torch until an optimizer is built.
"""

_NAMES = {"OptimizerFactory": "factory", "build_optimizer": "factory", "LoRAPlus": "loraplus",
          "GaLore": "galore", "APOLLO": "apollo", "BAdam": "badam", "BAdamRatio": "badam", "AdamMini": "adam_mini",
          "Muon": "muon", "CombinedOptimizer": "combined", "LayerwiseOptimizer": "combined"}


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"lit_factory.optim.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'lit_factory.optim' has no attribute {name!r}")


__all__ = list(_NAMES)
