"""A value head: one scalar per token from the base model's last hidden state (reward model, PPO critic).

Saved as ``value_head.safetensors`` beside the adapter or model it was trained with, so that a later stage loads the
adapter onto the same base (as a second PEFT adapter) and this head on top.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from lit_factory.errors import LitFactoryError
from lit_factory.io import write_file_atomically

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """Linear map hidden state -> scalar, kept in float32 whatever the model's dtype.

    Args:
        hidden_size: Width of the base model's hidden states.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Values ``[batch, seq]`` for hidden states ``[batch, seq, hidden]``."""
        return self.summary(hidden_states.to(self.summary.weight.dtype)).squeeze(-1)


def last_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states, without computing vocabulary logits (a causal LM, PEFT-wrapped or not).

    LoRA layers live inside the decoder's modules, so calling the decoder alone still applies them.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's value at its last attended (non-pad) token, for left or right padding."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (positions * attention_mask.bool()).argmax(-1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


@contextmanager
def value_head_set_aside(model: nn.Module) -> Iterator[ValueHead]:
    """Take ``model.value_head`` out of the model while it is saved (it is not part of the causal LM that
    transformers/PEFT reload from the folder), yield it, and put it back."""
    head = model.value_head
    del model.value_head
    try:
        yield head
    finally:
        model.add_module("value_head", head)


def save_value_head(head: ValueHead, directory: str | Path) -> Path:
    """Write ``value_head.safetensors`` into ``directory`` atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    target = Path(directory) / VALUE_HEAD_FILE
    tensors = {name: t.detach().cpu().contiguous() for name, t in head.state_dict().items()}
    return write_file_atomically(target, lambda staging: save_file(tensors, str(staging)))


def load_value_head(directory: str | Path, device: str | torch.device = "cpu") -> ValueHead:
    """The value head saved by a reward-model run in ``directory``."""
    from safetensors.torch import load_file

    path = Path(directory) / VALUE_HEAD_FILE
    if not path.is_file():
        raise LitFactoryError(
            f"model.init_args.reward_model: {str(path)!r} not found. Fix: give the output folder of a reward-model run."
        )
    state = load_file(str(path), device=str(device))
    head = ValueHead(state["summary.weight"].size(1)).to(device)
    head.load_state_dict(state)
    return head
