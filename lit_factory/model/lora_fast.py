"""A fused LoRA linear layer: ``y = x Wᵀ + b + s · (x Aᵀ) Bᵀ`` as one autograd function.

The backward takes the paper's order: dA = s · (dZ B)ᵀ X — an [N, r] product first, never an [in, out] one —
and folds the scale ``s`` into the rank-r tensors instead of scaling [N, out] activations and gradients as PEFT's
``lora_B(lora_A(x)) * scaling`` does. Hand-written because PEFT has no hook for custom LoRA kernels: the PEFT
``Linear`` modules keep their parameters (saving, merging, loading unchanged); only their forward is swapped.
"""

from __future__ import annotations

import types
from typing import Any, Optional

import torch
import torch.nn.functional as F


class LoRALinearFunction(torch.autograd.Function):
    """Forward and backward of a frozen linear layer plus a LoRA update (A: [r, in], B: [out, r])."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        h = x2 @ lora_a.t()  # [N, r]
        out = F.linear(x2, weight, bias)
        out.addmm_(h, lora_b.t(), alpha=scale)  # scale and add fused into the rank-r matmul
        ctx.save_for_backward(x2, h, weight, lora_a, lora_b)
        ctx.scale, ctx.shape, ctx.has_bias = scale, shape, bias is not None
        return out.reshape(*shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x2, h, weight, lora_a, lora_b = ctx.saved_tensors
        scale = ctx.scale
        dz = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out]
        g = (dz @ lora_b) * scale  # [N, r]: dZ Bᵀ in the paper's notation, scaled while it is small
        grad_a = g.t() @ x2 if ctx.needs_input_grad[3] else None  # [r, in] = Xᵀ(dZ Bᵀ), transposed
        grad_b = (dz.t() @ h) * scale if ctx.needs_input_grad[4] else None  # [out, r]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (dz @ weight).addmm_(g, lora_a).reshape(ctx.shape)
        grad_w = dz.t() @ x2 if ctx.needs_input_grad[1] else None
        grad_bias = dz.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


def _fast_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT ``lora.Linear.forward`` through ``LoRALinearFunction`` when the layer is a plain single-adapter LoRA
    (no DoRA, no dropout, not merged or disabled, one dtype, no autocast); PEFT's own forward otherwise."""
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    base = self.base_layer
    if (self.disable_adapters or self.merged or len(adapters) != 1 or args or kwargs
            or self.use_dora.get(adapters[0], False) or not isinstance(base, torch.nn.Linear)
            or (self.training and not isinstance(self.lora_dropout[adapters[0]], torch.nn.Identity))
            or torch.is_autocast_enabled(x.device.type)
            or not x.dtype == base.weight.dtype == self.lora_A[adapters[0]].weight.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    return LoRALinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                    float(self.scaling[name]))


def use_fast_lora(model: torch.nn.Module) -> int:
    """Route the forward of every PEFT LoRA ``Linear`` in ``model`` through ``LoRALinearFunction``; returns how
    many layers were switched."""
    from peft.tuners.lora import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if type(module) is LoraLinear:  # subclasses (bitsandbytes, GPTQ...) keep PEFT's forward
            module.forward = types.MethodType(_fast_forward, module)
            switched += 1
    return switched
