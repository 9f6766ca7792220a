"""The vocabulary projection of the stages' losses: next-token loss, per-sequence and per-token log-probabilities.

``FullLogits`` is the plain path: the model's own forward, with float32 logits over the whole vocabulary for every
position of the batch (for a 151k vocabulary, 4 × 1024 tokens: 2.5 GB per copy, and cross-entropy's backward makes
several). ``ChunkedLogits`` (the default) runs the model's own forward with its head projecting no position, keeps
the decoder's last hidden states of the positions that carry a label, and projects them a chunk of tokens at a time
in a custom autograd function that recomputes each chunk's logits in the backward pass, so at most one chunk's logits
exist at once. On CUDA its next-token loss runs Liger's fused linear cross-entropy kernel when ``liger-kernel`` is
installed (``pip install 'lit-factory[liger]'``).

Sharded weights: the forward is the model's own (the root module of FSDP2 and ZeRO-3, whose hooks gather the
weights), and the projection runs as a call of the model's ``lm_head`` module, so DeepSpeed ZeRO-3's per-module hooks
gather its weight for the projection and again for its backward; under FSDP2 the head belongs to the root unit
(``lit_factory.distributed.FSDP``), which stays gathered from its forward to its backward (``FSDPModule.unshard`` where
the root reshards after its forward, as a frozen reference model's does).

Both return the same numbers and gradients (tests/stages/test_lm_head.py compares them); a model whose head is not a plain
linear projection with a known logit transform (``HEAD_TRANSFORMS``) takes the plain path, logged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal, Optional, Union

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

#: How each supported model type turns its decoder's last hidden state h into logits, besides ``lm_head(h)``
#: (read off each ``...ForCausalLM.forward`` in transformers): a config attribute that scales the logits (and
#: whether it multiplies or divides), and one that soft-caps them as ``cap * tanh(logits / cap)``.
HEAD_TRANSFORMS: dict[str, dict[str, Any]] = {
    **{name: {} for name in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "phi3", "olmo2", "glm4",
        "starcoder2", "deepseek_v3",
    )},
    "gemma2": {"softcap": "final_logit_softcapping"},
    "gemma3_text": {"softcap": "final_logit_softcapping"},
    "cohere": {"multiply": "logit_scale"},
    "cohere2": {"multiply": "logit_scale"},
    "granite": {"divide": "logits_scaling"},
    "granitemoe": {"divide": "logits_scaling"},
}


def next_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The token each position predicts: labels shifted left, -100 at the end (position t's logits score t+1).

    The labels shift rather than the logits: slicing the logits would copy the largest tensor of the step.
    """
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy over the positions whose label is not -100 (computed in float32): their mean, or
    their sum for ``Stage.token_mean`` to divide by the optimizer step's token count."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), next_tokens(labels).reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens (labels != -100) and how many there are, from logits.

    Computed in at least float32 through ``cross_entropy``, which fuses log-softmax and gather instead of
    materialising a second vocabulary-sized tensor.
    """
    targets = next_tokens(labels)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token_logps = -F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    return token_logps.sum(-1), (targets != IGNORE_INDEX).sum(-1)


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers injected), or the model itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


class FullLogits:
    """The plain path: full-vocabulary logits from the model's own forward, as transformers computes them.

    Choose it (``loss_head: lit_factory.stages.lm_head.FullLogits``) to compare against, or for a model whose
    head ``ChunkedLogits`` does not know; it takes no arguments.
    """

    def next_token_loss(self, model: torch.nn.Module, labels: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Summed float32 next-token cross-entropy over the labelled positions of ``model(**inputs)``."""
        return causal_lm_loss(model(**inputs).logits, labels, "sum")

    def sequence_logps(
        self, model: torch.nn.Module, labels: torch.Tensor, **inputs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's summed log-probability of its labelled tokens, and their count (``sequence_logps``)."""
        return sequence_logps(model(**inputs).logits, labels)

    def response_logps(
        self, model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For PPO: the last hidden states, log-probabilities and entropies (at ``temperature``) of the response
        positions ``sequences[:, prompt_length:]``; positions outside ``attention_mask`` (after a response's end)
        get log-probability and entropy 0. Positions count from each row's first real token (left padding)."""
        causal_lm = causal_lm_of(model)
        response_length = sequences.size(1) - prompt_length
        out = causal_lm(input_ids=sequences, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                        use_cache=False, output_hidden_states=True, logits_to_keep=response_length + 1)
        hidden = out.hidden_states[-1][:, prompt_length - 1 : -1]
        logits = out.logits[:, :-1].float() / temperature
        real = attention_mask[:, prompt_length:].bool()
        logps = torch.gather(logits.log_softmax(-1), 2, sequences[:, prompt_length:, None]).squeeze(-1)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        return hidden, logps.masked_fill(~real, 0), entropy.masked_fill(~real, 0)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class LinearHead:
    """A causal LM's vocabulary projection as ``softcap(logit_scale * hidden @ module.weight.T)``; ``module`` is the
    model's bias-free ``lm_head``, whose weight is read only while that module is called (``project``)."""

    module: torch.nn.Linear
    logit_scale: float = 1.0
    softcap: Optional[float] = None

    def project(self, function: Callable[..., Any], *tensors: torch.Tensor) -> Any:
        """``function(weight, *tensors)`` run as the forward of ``module``, so the module's hooks run around it:
        DeepSpeed ZeRO-3 gathers the partitioned weight before and releases it after, and hooks the outputs to gather
        it again for their backward (``deepspeed/runtime/zero/parameter_offload.py``); the tensors go through the
        call so its hooks see them. Hand-written because neither library offers "call this module with another
        function"; accelerate's hooks replace ``forward`` on the instance the same way."""
        module = self.module
        own_forward = module.__dict__.get("forward")
        module.forward = lambda *hooked: function(module.weight, *hooked)
        try:
            return module(*tensors)
        finally:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward


def linear_head(causal_lm: torch.nn.Module) -> Union[LinearHead, str]:
    """The model's head as a ``LinearHead``, or why it is not one (the reason the plain path is taken)."""
    from lit_factory.model.patches import is_vision_language

    config = getattr(causal_lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if not hasattr(causal_lm, "get_decoder") or config is None:
        return f"{type(causal_lm).__name__} is not a transformers causal LM"
    if model_type not in HEAD_TRANSFORMS or is_vision_language(config):
        return f"model type {model_type!r} is not in lit_factory.stages.lm_head.HEAD_TRANSFORMS"
    head = causal_lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:  # LoRA/modules_to_save on lm_head, quantized
        return f"its lm_head is a {type(head).__name__}{' with a bias' if head.bias is not None else ''}, " \
               "not a plain bias-free Linear"
    rule = HEAD_TRANSFORMS[model_type]
    scale = 1.0
    if "multiply" in rule:
        scale = float(getattr(config, rule["multiply"]))
    if "divide" in rule:
        scale = 1.0 / float(getattr(config, rule["divide"]))
    softcap = getattr(config, rule["softcap"], None) if "softcap" in rule else None
    return LinearHead(head, scale, softcap)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor" or type(tensor.data).__name__ == "DTensor"


def final_hidden_states(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """The decoder's last hidden states ``[B, T, H]`` from the model's own forward, its head projecting no position.

    The model's own forward rather than its decoder alone: under FSDP2 and ZeRO-3 ``model`` is the root module, whose
    hooks gather the embeddings and final norm (the decoder called alone met FSDP2's sharded DTensors). The head sees
    an empty index (``logits_to_keep``), so its output is ``[B, 0, V]``; a forward hook on the decoder keeps what the
    head would have projected.
    """
    decoder = causal_lm_of(model).get_decoder()
    kept: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda module, args, output: kept.append(output.last_hidden_state))
    device = next(value.device for value in inputs.values() if isinstance(value, torch.Tensor))
    try:
        model(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long, device=device))
    finally:
        hook.remove()
    return kept[-1]


def _project_whole(model: torch.nn.Module, head: LinearHead, function: Callable[..., Any],
                   *tensors: torch.Tensor) -> Any:
    """``head.project(function, *tensors)`` with the head weight whole, not an FSDP2 shard.

    ``lit_factory.distributed.FSDP`` makes the head part of the root unit, which the root's forward gathers. A
    trained model's root keeps it gathered until its backward (FSDP2's default for the root): the gradient reaches
    the whole weight, and the root's post-backward reduce-scatters it and reshards. A root that reshards after its
    forward (a frozen reference model's) is gathered again here (``FSDPModule.unshard``) and resharded after the
    projection when no backward follows (otherwise its post-backward does).
    """
    gathered = _is_dtensor(head.module.weight)
    if gathered:
        model.unshard()
    result = head.project(function, *tensors)
    outputs = result if isinstance(result, tuple) else (result,)
    if gathered and not any(output.requires_grad for output in outputs):
        model.reshard()
    return result


def _not_whole_reason(model: torch.nn.Module, head: LinearHead) -> Optional[str]:
    """Why ``_project_whole`` cannot make the head whole, if it cannot: its weight is an FSDP2 shard and ``model``,
    which lit-factory's FSDP makes the unit that holds the head, is no FSDP unit."""
    if not _is_dtensor(head.module.weight):
        return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return None
    return "its lm_head weight is sharded by an FSDP unit other than the model's root"


class ChunkedLogits(FullLogits):
    """Memory-lean losses: only labelled positions are projected, a chunk of tokens at a time, and no
    full-vocabulary logits of the batch ever exist (the module docstring says how). Same values and gradients as
    ``FullLogits``; models it does not know take that path (logged once).

    Args:
        chunk_tokens: Tokens projected at once; a chunk's float32 logits take ``chunk_tokens × vocabulary × 4``
            bytes (a 151k vocabulary, 256 tokens: 155 MB), and the backward pass holds about three such buffers.
        cuda_kernel: ``liger``: on CUDA, the next-token loss runs Liger's ``LigerFusedLinearCrossEntropyLoss`` when
            ``liger-kernel`` is installed (else these chunks); ``none``: always these chunks.
    """

    def __init__(self, chunk_tokens: int = 256, cuda_kernel: Literal["liger", "none"] = "liger") -> None:
        if chunk_tokens < 1:
            from lit_factory.errors import LitFactoryError

            raise LitFactoryError("model.init_args.loss_head.init_args.chunk_tokens: must be at least 1")
        self.chunk_tokens = chunk_tokens
        self.cuda_kernel = cuda_kernel
        self._reported: set[str] = set()

    def _head(self, model: torch.nn.Module) -> Optional[LinearHead]:
        head = linear_head(causal_lm_of(model))
        if not isinstance(head, str):
            head = _not_whole_reason(model, head) or head
        if isinstance(head, str):
            if head not in self._reported:
                from lightning.pytorch.utilities import rank_zero_info

                self._reported.add(head)
                rank_zero_info(f"ChunkedLogits: full logits (the plain path) for this model: {head}")
            return None
        return head

    def _labelled_hidden(
        self, model: torch.nn.Module, labels: torch.Tensor, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states of the labelled positions ``[N, H]``, their next tokens ``[N]`` and row indices ``[N]``."""
        hidden = final_hidden_states(model, **inputs)
        targets = next_tokens(labels)
        rows, columns = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        return hidden[rows, columns], targets[rows, columns], rows

    def next_token_loss(self, model: torch.nn.Module, labels: torch.Tensor, **inputs: Any) -> torch.Tensor:
        head = self._head(model)
        if head is None:
            return super().next_token_loss(model, labels, **inputs)
        hidden, targets, _ = self._labelled_hidden(model, labels, inputs)
        hidden = _scaled(hidden, head)
        liger = _liger_loss() if self.cuda_kernel == "liger" and hidden.is_cuda else None
        if liger is not None:
            return _project_whole(model, head, lambda weight, h, y: liger(reduction="sum", softcap=head.softcap)(
                weight, h, y), hidden, targets)
        return _project_whole(model, head, partial(_cross_entropy_sum, softcap=head.softcap,
                                                   chunk_tokens=self.chunk_tokens), hidden, targets)

    def sequence_logps(
        self, model: torch.nn.Module, labels: torch.Tensor, **inputs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        head = self._head(model)
        if head is None:
            return super().sequence_logps(model, labels, **inputs)
        hidden, targets, rows = self._labelled_hidden(model, labels, inputs)
        logps = _project_whole(model, head, partial(_token_logps, softcap=head.softcap,
                                                    chunk_tokens=self.chunk_tokens), _scaled(hidden, head), targets)
        sums = torch.zeros(labels.size(0), dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)
        return sums, (next_tokens(labels) != IGNORE_INDEX).sum(-1)

    def response_logps(
        self, model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        head = self._head(model)
        if head is None:
            return super().response_logps(model, sequences, attention_mask, prompt_length, temperature)
        hidden = final_hidden_states(model, input_ids=sequences, attention_mask=attention_mask,
                                     position_ids=_positions(attention_mask),
                                     use_cache=False)[:, prompt_length - 1 : -1]
        real = attention_mask[:, prompt_length:].bool()
        logps, entropy = _project_whole(
            model, head, partial(_token_logps, softcap=head.softcap, temperature_scale=1.0 / temperature,
                                 entropy=True, chunk_tokens=self.chunk_tokens),
            _scaled(hidden[real], head), sequences[:, prompt_length:][real])
        return hidden, _scatter(logps, real), _scatter(entropy, real)


def _scaled(hidden: torch.Tensor, head: LinearHead) -> torch.Tensor:
    # (s·h) @ Wᵀ = s·(h @ Wᵀ): a logit scale folds into the (few) labelled hidden states, before any soft-cap.
    return hidden * head.logit_scale if head.logit_scale != 1.0 else hidden


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``values`` of the positions ``where`` is true, in a zero tensor of ``where``'s shape (differentiably)."""
    return torch.zeros(where.shape, dtype=values.dtype, device=values.device).masked_scatter(where, values)


def _liger_loss() -> Optional[type]:
    """Liger's fused linear cross-entropy loss class (CUDA), or None when liger-kernel is not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss


def _cross_entropy_sum(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor, **options: Any) -> Any:
    """``linear_cross_entropy_sum`` with the weight first (``LinearHead.project``'s order)."""
    return linear_cross_entropy_sum(hidden, weight, targets, **options)


def _token_logps(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor, **options: Any) -> Any:
    """``linear_token_logps`` with the weight first (``LinearHead.project``'s order): the log-probs, and the
    entropies too when ``entropy=True``."""
    logps, entropies = linear_token_logps(hidden, weight, targets, **options)
    return (logps, entropies) if options.get("entropy") else logps


def linear_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: Optional[float] = None,
    temperature_scale: float = 1.0, entropy: bool = False, chunk_tokens: int = 256,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """At least float32 ``log_softmax(z)[target]`` (and the entropy of ``softmax(z)`` when asked) for each row of
    ``hidden``, where ``z = temperature_scale * softcap(hidden @ weight.T)``, computed ``chunk_tokens`` rows at a time.

    Hand-written because no library provides it on CPU (Liger's kernels are Triton/CUDA-only and compute only the
    cross-entropy, not the entropy); the backward pass recomputes each chunk's logits instead of keeping them.
    """
    if hidden.size(0) == 0:  # no labelled token: keep the graph connected so backward still reaches the weights
        zero = (hidden.sum() * 0 + weight.sum() * 0).float().expand(0)
        return zero, (zero if entropy else None)
    logps, entropies = _LinearTokenLogps.apply(hidden, weight, targets, softcap, temperature_scale, entropy,
                                               chunk_tokens)
    return logps, (entropies if entropy else None)


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: Optional[float] = None,
    chunk_tokens: int = 256,
) -> torch.Tensor:
    """``-linear_token_logps(...).sum()``, faster: the gradient of a sum reaches every token with the same weight,
    so each chunk's gradients are computed in the forward pass (as Liger's kernel does) and nothing is recomputed."""
    if hidden.size(0) == 0:
        return (hidden.sum() * 0 + weight.sum() * 0).float()
    # Inside an autograd Function the grad mode is always off: whether a backward can follow is decided here.
    with_gradients = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropySum.apply(hidden, weight, targets, softcap, chunk_tokens, with_gradients)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: Optional[float], scale: float) -> torch.Tensor:
    # The matmul runs in the model's dtype (as lm_head does), the softmax maths in at least float32.
    logits = hidden @ weight.T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is not None:
        logits = logits.div_(softcap).tanh_().mul_(softcap)
    return logits.mul_(scale) if scale != 1.0 else logits


def _logits_gradient(
    logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad_logps: torch.Tensor,
    softcap: Optional[float], scale: float, entropies: Optional[torch.Tensor] = None,
    grad_entropies: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The gradient at ``hidden @ weight.T`` of a chunk, given the gradients at its log-probs (and entropies);
    overwrites ``logits`` (two chunk-sized buffers at most, three with a soft-cap)."""
    capped_slope = _capped_slope(logits, softcap, scale)
    log_probs = logits.sub_(lse[:, None])
    probs = log_probs.exp()
    # dz of logp_y: g (onehot(y) - p);  dz of H: -g p (log p + H)
    entropy_term = (log_probs.add_(entropies[:, None]).mul_(probs).mul_(grad_entropies[:, None])
                    if grad_entropies is not None else None)
    grad = probs.mul_(-grad_logps[:, None])
    grad.scatter_add_(1, targets[:, None], grad_logps[:, None])
    if entropy_term is not None:
        grad.sub_(entropy_term)
    if scale != 1.0:
        grad.mul_(scale)
    return grad.mul_(capped_slope) if capped_slope is not None else grad


def _capped_slope(logits: torch.Tensor, softcap: Optional[float], scale: float) -> Optional[torch.Tensor]:
    # d(c tanh(u/c))/du = 1 - tanh², the tanh read back from the capped logits z = scale * c * tanh
    return 1 - (logits / (scale * softcap)) ** 2 if softcap is not None else None


class _GradientSums:
    """Accumulates a chunked linear layer's input and weight gradients (the weight's in at least float32, as one
    matmul accumulates internally)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, need_hidden: bool, need_weight: bool) -> None:
        self.hidden, self.weight = hidden, weight
        self.grad_hidden = torch.empty_like(hidden) if need_hidden else None
        self.grad_weight = (torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
                            if need_weight else None)

    def add(self, part: slice, grad: torch.Tensor) -> None:
        grad = grad.to(self.weight.dtype)
        if self.grad_hidden is not None:
            self.grad_hidden[part] = grad @ self.weight
        if self.grad_weight is not None:
            self.grad_weight.addmm_(grad.T.to(self.grad_weight.dtype), self.hidden[part].to(self.grad_weight.dtype))

    def result(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        weight = self.grad_weight.to(self.weight.dtype) if self.grad_weight is not None else None
        return self.grad_hidden, weight


class _LinearTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, scale, entropy, chunk_tokens):
        logps = torch.empty(hidden.size(0), dtype=torch.promote_types(hidden.dtype, torch.float32),
                            device=hidden.device)
        lses, entropies = torch.empty_like(logps), torch.zeros_like(logps)
        for start in range(0, hidden.size(0), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = _chunk_logits(hidden[part], weight, softcap, scale)
            log_probs = torch.log_softmax(logits, -1)  # one fused pass (logsumexp would allocate a temporary)
            logps[part] = log_probs.gather(1, targets[part, None]).squeeze(1)
            lses[part] = logits.gather(1, targets[part, None]).squeeze(1) - logps[part]
            del logits
            if entropy:  # H = sum -p log p
                entropies[part] = torch.special.entr(log_probs.exp_()).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lses, entropies)
        ctx.options = (softcap, scale, entropy, chunk_tokens)
        return logps, entropies

    @staticmethod
    def backward(ctx, grad_logps, grad_entropies):
        hidden, weight, targets, lses, entropies = ctx.saved_tensors
        softcap, scale, entropy, chunk_tokens = ctx.options
        sums = _GradientSums(hidden, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_logps = torch.zeros_like(lses) if grad_logps is None else grad_logps
        grad_entropies = grad_entropies if entropy else None
        for start in range(0, hidden.size(0), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = _chunk_logits(hidden[part], weight, softcap, scale)
            sums.add(part, _logits_gradient(
                logits, lses[part], targets[part], grad_logps[part], softcap, scale, entropies[part],
                None if grad_entropies is None else grad_entropies[part]))
        return *sums.result(), None, None, None, None, None


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_tokens, with_gradients):
        sums = _GradientSums(hidden, weight, with_gradients and ctx.needs_input_grad[0],
                             with_gradients and ctx.needs_input_grad[1])
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        for start in range(0, hidden.size(0), chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = _chunk_logits(hidden[part], weight, softcap, 1.0)
            capped_slope = _capped_slope(logits, softcap, 1.0) if with_gradients else None
            log_probs = torch.log_softmax(logits, -1)
            del logits
            total -= log_probs.gather(1, targets[part, None]).sum()
            if with_gradients:  # the loss is -sum(logp): dz = softmax - onehot(y), in place
                grad = log_probs.exp_()
                grad.scatter_add_(1, targets[part, None], torch.full_like(grad[:, :1], -1.0))
                sums.add(part, grad.mul_(capped_slope) if capped_slope is not None else grad)
        ctx.gradients = sums.result()
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.gradients
        return (None if grad_hidden is None else grad_hidden * grad_total,
                None if grad_weight is None else grad_weight * grad_total, None, None, None, None)
