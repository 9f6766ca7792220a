"""Generation: one set of sampling parameters and one engine that chat, predict and serve share.

The engine renders a conversation with the same chat template as training (``lit_factory.data.templates``), runs
``model.generate`` and cuts the reply at the template's stop words. Stop words that are single tokens (``<|im_end|>``)
end generation as extra eos ids; longer ones go to transformers' ``stop_strings`` and are trimmed from the text.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generator, Iterator, Literal, Optional

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    import torch

    from lit_factory.data.templates import Message, Template
    from lit_factory.model.builder import ModelArgs


@dataclass
class GenerationArgs:
    """Decoding parameters shared by ``lit-factory chat``, ``predict`` and ``serve``.

    Args:
        max_new_tokens: Most tokens to generate per reply.
        temperature: Sampling temperature; 0 means greedy decoding (always the most likely token).
        top_p: Nucleus sampling: sample among the most likely tokens whose probabilities sum to this.
        top_k: Sample among the this many most likely tokens (0: no limit).
        repetition_penalty: Divides the logits of tokens already in the text (1.0: off; CTRL paper's penalty).
    """

    max_new_tokens: int = 512
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "repetition_penalty": self.repetition_penalty > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise LitFactoryError(
                    f"generation.{name}={getattr(self, name)!r} is out of range. Fix: max_new_tokens >= 1, "
                    "temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0."
                )

    def updated(self, **overrides: Any) -> "GenerationArgs":
        """A copy with the given fields changed; ``None`` values keep the current setting."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def generate_kwargs(self, tokenizer: Any, stop_words: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: sampling settings, eos ids and stop strings."""
        eos_ids, stop_strings = stop_token_ids(tokenizer, stop_words)
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": eos_ids,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # Unset sampling fields, so a model's own generation_config (e.g. temperature 0.7) raises no warning.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)
        return kwargs


def stop_token_ids(tokenizer: Any, stop_words: tuple[str, ...]) -> tuple[list[int], list[str]]:
    """The eos id plus the ids of single-token stop words, and the stop words that span several tokens."""
    eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stop_strings = []
    for word in stop_words:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) == 1:
            if ids[0] not in eos_ids:
                eos_ids.append(ids[0])
        else:
            stop_strings.append(word)
    if not eos_ids:
        raise LitFactoryError(
            "the tokenizer has no eos token and the template no single-token stop word, so generation could not "
            "stop before max_new_tokens. Fix: use a template with stop_words (e.g. --template chatml)."
        )
    return eos_ids, stop_strings


def cut_at_stop_words(text: str, stop_words: tuple[str, ...]) -> str:
    """``text`` up to the first stop word (stop strings stay in what ``generate`` returns)."""
    cut = min((index for index in (text.find(word) for word in stop_words if word) if index >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@dataclass
class Reply:
    """A generated reply and its accounting (the fields of an OpenAI ``usage`` block and ``finish_reason``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


def generate_batch(
    model: Any,
    tokenizer: Any,
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    generation: GenerationArgs,
    stop_words: tuple[str, ...] = (),
    **generate_extra: Any,
) -> list[Reply]:
    """Generate for a batch of LEFT-padded prompts; one :class:`Reply` per row. ``generate_extra`` goes to
    ``model.generate`` (e.g. ``stopping_criteria``, ``prefix_allowed_tokens_fn``)."""
    import torch

    kwargs = generation.generate_kwargs(tokenizer, stop_words)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **generate_extra)
    new_tokens = output[:, input_ids.shape[1]:]
    eos_ids = set(kwargs["eos_token_id"])
    replies = []
    for row, tokens in enumerate(new_tokens.tolist()):
        ended = next((i for i, token in enumerate(tokens) if token in eos_ids), None)
        kept = tokens if ended is None else tokens[: ended + 1]
        decoded = tokenizer.decode(kept, skip_special_tokens=True)
        text = cut_at_stop_words(decoded, stop_words)
        stopped = ended is not None or len(text) < len(decoded)
        replies.append(Reply(text, int(attention_mask[row].sum()), len(kept), "stop" if stopped else "length"))
    return replies


class StreamedReply:
    """Iterate to receive the reply piece by piece; afterwards the accounting fields are set."""

    def __init__(self, pieces: Iterator[str], prompt_tokens: int) -> None:
        self._pieces = pieces
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: Literal["stop", "length"] = "stop"
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece


class ChatEngine:
    """A model, its tokenizer and chat template, and default generation settings.

    Args:
        model: a causal LM (``build_inference_model``), in eval mode.
        tokenizer: its tokenizer.
        template: the chat template the model was trained with.
        generation: default decoding settings; each call may override fields.
    """

    def __init__(self, model: Any, tokenizer: Any, template: "Template", generation: GenerationArgs) -> None:
        from lit_factory.infer.scheduling import TokenTurns

        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.generation = generation
        # Callers in several threads (the server) take turns at every generated token (see infer.scheduling).
        self.turns = TokenTurns()

    @classmethod
    def load(
        cls, model_args: "ModelArgs", template: str = "auto", generation: Optional[GenerationArgs] = None,
        device: str = "auto",
    ) -> "ChatEngine":
        """Build tokenizer and model (with ``model_args.adapter`` applied) and resolve the template."""
        import torch

        from lit_factory.data.templates import get_template
        from lit_factory.model.builder import build_inference_model, build_tokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = build_tokenizer(model_args)
        chat_template = get_template(template, tokenizer)
        model = build_inference_model(model_args, tokenizer, torch.device(device))
        return cls(model, tokenizer, chat_template, generation or GenerationArgs())

    @property
    def stop_words(self) -> tuple[str, ...]:
        return tuple(self.template.stop_words)

    @property
    def template_name(self) -> str:
        """The template's registry name (``tokenizer`` for the tokenizer's own jinja template)."""
        return getattr(self.template, "name", None) or "tokenizer"

    def encode(self, messages: list["Message"], system: Optional[str] = None, tools: str = "") -> list[int]:
        """Token ids of the generation prompt for ``messages`` (ending with a user or observation message);
        ``tools`` is a JSON list of tool definitions, written where the template puts them."""
        from lit_factory.data.tokenize import special_tokens

        bos_token, eos_token = special_tokens(self.tokenizer)
        extra = {"tools": tools} if tools else {}  # only templates with a tool format take the argument
        prompt = self.template.render_prompt(messages, system, bos_token, eos_token, **extra)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def encode_text(self, prompt: str) -> list[int]:
        """Token ids of a raw text prompt (no chat template; the tokenizer's own bos, as for a base model)."""
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def chat(
        self, messages: list["Message"], system: Optional[str] = None, stop: tuple[str, ...] = (), tools: str = "",
        json_schema: Optional[dict[str, Any]] = None, **overrides: Any,
    ) -> Reply:
        """The whole reply to ``messages``. ``stop`` adds stop words to the template's, ``tools`` (JSON) offers
        tools, ``json_schema`` constrains the reply to JSON matching it (see ``infer.json_mode``), ``overrides``
        change fields of the generation settings for this call."""
        return self.complete_ids(self.encode(messages, system, tools), self.stop_words + tuple(stop), json_schema,
                                 **overrides)

    def stream(
        self, messages: list["Message"], system: Optional[str] = None, stop: tuple[str, ...] = (), tools: str = "",
        json_schema: Optional[dict[str, Any]] = None, **overrides: Any,
    ) -> StreamedReply:
        """The reply to ``messages`` as it is generated; arguments as for :meth:`chat`."""
        return self.stream_ids(self.encode(messages, system, tools), self.stop_words + tuple(stop), json_schema,
                               **overrides)

    def _generate_extra(self, stop_words: tuple[str, ...], json_schema: Optional[dict[str, Any]]) -> dict[str, Any]:
        from lit_factory.infer.scheduling import pass_turn_criteria

        extra: dict[str, Any] = {"stopping_criteria": [pass_turn_criteria(self.turns)]}
        if json_schema is not None:
            from lit_factory.infer.json_mode import json_constraint

            eos_ids, _ = stop_token_ids(self.tokenizer, stop_words)
            extra["prefix_allowed_tokens_fn"] = json_constraint(self.tokenizer, eos_ids, json_schema)
        return extra

    def complete_ids(
        self, prompt_ids: list[int], stop_words: tuple[str, ...] = (), json_schema: Optional[dict[str, Any]] = None,
        **overrides: Any,
    ) -> Reply:
        """The whole continuation of ``prompt_ids``, cut at ``stop_words`` (besides the eos token)."""
        import torch

        ids = torch.tensor([prompt_ids], device=self.model.device)
        extra = self._generate_extra(stop_words, json_schema)
        with self.turns.turn():
            return generate_batch(self.model, self.tokenizer, ids, torch.ones_like(ids),
                                  self.generation.updated(**overrides), stop_words, **extra)[0]

    def stream_ids(
        self, prompt_ids: list[int], stop_words: tuple[str, ...] = (), json_schema: Optional[dict[str, Any]] = None,
        **overrides: Any,
    ) -> StreamedReply:
        """The continuation of ``prompt_ids`` as it is generated (transformers' ``TextIteratorStreamer`` in a
        thread)."""
        import torch
        from transformers import TextIteratorStreamer

        ids = torch.tensor([prompt_ids], device=self.model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        generation = self.generation.updated(**overrides)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        reply = StreamedReply(iter(()), len(prompt_ids))
        kwargs = generation.generate_kwargs(self.tokenizer, stop_words)
        extra = self._generate_extra(stop_words, json_schema)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self.turns.turn(), torch.inference_mode():
                    output = self.model.generate(**inputs, streamer=streamer, **kwargs, **extra)
                new_tokens = output[0, len(prompt_ids):].tolist()
                reply.completion_tokens = len(new_tokens)
                if not (new_tokens and new_tokens[-1] in kwargs["eos_token_id"]):
                    reply.finish_reason = "length"
            except BaseException as err:  # surfaced to the reader below instead of dying silently in the thread
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def pieces() -> Iterator[str]:
            stopped_by_word = yield from _trim_stop_words(streamer, stop_words)
            thread.join()
            if failure:
                raise failure[0]
            if stopped_by_word:
                reply.finish_reason = "stop"

        reply._pieces = pieces()
        return reply


def _trim_stop_words(pieces: Iterator[str], stop_words: tuple[str, ...]) -> Generator[str, None, bool]:
    """Pass text through, holding back a tail that could be the start of a stop word; end at one (returns True)."""
    hold = max((len(word) for word in stop_words), default=1) - 1
    pending = ""
    for piece in pieces:
        pending += piece
        cut = cut_at_stop_words(pending, stop_words)
        if len(cut) < len(pending):
            if cut:
                yield cut
            for _ in pieces:  # let generation finish (the streamer's queue must be drained)
                pass
            return True
        if len(pending) > hold:
            yield pending[: len(pending) - hold]
            pending = pending[len(pending) - hold:]
    if pending:
        yield pending
    return False
