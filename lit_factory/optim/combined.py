"""Several optimizers presented to Lightning as one: Muon with its AdamW companion, and the layer-wise mode of
GaLore/APOLLO (one optimizer per parameter, stepped during the backward pass).

Hand-written because torch has no optimizer container and Lightning's automatic optimization drives exactly one
optimizer per step. The container's ``param_groups`` are the inner optimizers' own group dicts, so the stage's LR
schedule, Lightning's gradient clipping and the logged learning rate act on the inner optimizers directly.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from lit_factory.errors import LitFactoryError


class CombinedOptimizer(torch.optim.Optimizer):
    """Run the closure (forward and backward) once, then step every inner optimizer."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        # torch's Optimizer.__init__ sets up its hooks and profiling names; it needs one parameter to do so. The groups
        # are then replaced by the inner optimizers' own group dicts, which they keep reading their lr from.
        super().__init__([torch.zeros(1)], {})
        self.optimizers = list(optimizers)
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def _run_closure(self, closure: Optional[Callable[[], Any]]) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # noqa: D102 - torch's signature
        loss = self._run_closure(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 - one entry per inner optimizer (resumable checkpoints)
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        saved = state_dict.get("optimizers", [])
        if len(saved) != len(self.optimizers):
            raise LitFactoryError(f"--ckpt_path: the checkpoint holds {len(saved)} optimizer states where this run "
                                  f"builds {len(self.optimizers)}. Fix: resume with the model.init_args.optimizer "
                                  "settings it was saved with.")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(type(o).__name__ for o in self.optimizers)})"


class LayerwiseOptimizer(CombinedOptimizer):
    """One optimizer per parameter, stepped in that parameter's post-accumulate-grad hook and its gradient freed at
    once (galore-torch's "per-layer weight updates", LLaMA-Factory's ``galore_layerwise``/``apollo_layerwise``), so
    the whole model's gradients never exist together.

    The update happens inside ``backward``, so the gradients of one optimizer step cannot accumulate over several
    micro-batches, and Lightning's gradient clipping finds no gradient left to clip.
    """

    def __init__(self, per_parameter: dict[torch.nn.Parameter, torch.optim.Optimizer]) -> None:
        super().__init__(list(per_parameter.values()))
        self._inside_step = False
        for parameter, optimizer in per_parameter.items():
            parameter.register_post_accumulate_grad_hook(self._hook(optimizer))

    def _hook(self, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def step_now(parameter: torch.Tensor) -> None:
            if not self._inside_step:
                # Lightning runs the backward of every micro-batch but the last outside `optimizer.step`.
                raise LitFactoryError("model.init_args.optimizer.init_args.layerwise: the layer-wise mode updates "
                                      "weights during backward and cannot accumulate gradients. Fix: set "
                                      "trainer.accumulate_grad_batches: 1 (or layerwise: false).")
            if parameter.grad is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return step_now

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # noqa: D102 - the hooks did the updates
        self._inside_step = True
        try:
            return self._run_closure(closure)
        finally:
            self._inside_step = False

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102 - gradients are freed in the hooks
        return None
