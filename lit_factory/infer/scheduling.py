"""Fair turns for concurrent generations on one model: round-robin at every generated token.

``model.generate`` runs a whole reply in one call, so a lock around it makes a short request wait for every long one
ahead of it. Instead each generation holds :class:`TokenTurns` only while it computes one step: after each new token
(transformers calls its stopping criteria there) it hands the turn to the generations waiting, in arrival order,
and queues again behind them. With ``k`` replies in progress each gets every ``k``-th step, so a short request that
arrives during a long one finishes after about ``k`` times its own generation steps, not after the long one. Only one
step runs at a time, so the model is never entered from two threads at once (it is not re-entrant on GPU), and each
reply is exactly what ``generate`` would give it alone (its own cache, logits processors and stop criteria).

Throughput stays that of one request at a time (steps are not batched); what changes is who waits.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator


class TokenTurns:
    """A first-come-first-served turn for one generation step; :meth:`pass_turn` lets the others run a step."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()
        self._holder: object | None = None

    def acquire(self) -> None:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            while self._holder is not None or self._waiting[0] is not ticket:
                self._changed.wait()
            self._waiting.popleft()
            self._holder = ticket

    def release(self) -> None:
        with self._changed:
            self._holder = None
            self._changed.notify_all()

    def pass_turn(self) -> None:
        """Called by the holder between two steps: when others wait, each of them runs before this one goes on."""
        with self._changed:
            if not self._waiting:
                return
        self.release()
        self.acquire()

    @property
    def waiting(self) -> int:
        """Generations queued for a turn (not counting the one holding it)."""
        return len(self._waiting)

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def pass_turn_criteria(turns: TokenTurns) -> Any:
    """A transformers ``StoppingCriteria`` that never stops generation but passes the turn after each new token."""
    import torch
    from transformers import StoppingCriteria

    class PassTurn(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            turns.pass_turn()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return PassTurn()
