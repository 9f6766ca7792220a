"""Data objectives: what a stage trains on, one small class each.

An objective decides everything about the data that differs between stages: which dataset entries fit it (and the
one-line error when one does not), the rows it reads (standard conversation rows, or plain text), how a row becomes
token columns, the collator that batches them (the batch format the stage's loss reads), and a few batching rules
(packing, batch size, step windows, ``drop_last``). A stage names its class (``data_objective = Pairwise``) and the
CLI links it into the data module; a new kind of data is then one subclass of :class:`Objective`.

* :class:`Supervised`: the assistant replies of conversations (``input_ids``, ``labels``); SFT, DFT.
* :class:`PreTrain`: plain text packed into blocks of exactly ``cutoff_len`` tokens; every token is a target.
* :class:`Pairwise`: ranking rows as n chosen, then n rejected rows; DPO, ORPO, SimPO, reward models.
* :class:`KTO`: rows with a desirable flag, plus mismatched (prompt, completion) pairs for the KL term.
* :class:`Prompt`: left-padded generation prompts with the reference reply as text; PPO and ``predict``.

The encodings themselves (truncation, loss masks) are in :mod:`lit_factory.data.tokenize`, the batch formats in
:mod:`lit_factory.data.collators`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Optional, Union

from lit_factory.data.collators import KTOCollator, PaddingCollator, PairwiseCollator, PromptCollator
from lit_factory.data.tokenize import (
    IGNORE_INDEX, MEDIA, Encoding, assemble_supervised, encode_prompt, encode_prompt_and_replies, encoder,
    pack_pretrain_blocks, special_tokens, tokenize_pieces_batch,
)
from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    from datasets import Dataset

    from lit_factory.data.pipeline import Preprocessing
    from lit_factory.data.spec import DatasetSpec

Rows = list[tuple[list[int], Optional[list[int]]]]


class Objective:
    """What a stage trains on. Subclass it for a new kind of data; the class attributes and methods below are
    everything the data module asks of an objective (the defaults are those of conversation data)."""

    #: The short name recipes, messages and ``lit-factory data --objective`` use (built-in objectives).
    name: ClassVar[str] = "objective"
    #: The token columns :meth:`encode` writes for every kept row (media columns travel along).
    columns: ClassVar[tuple[str, ...]] = ()
    #: Rows are rendered with the chat template (False: the template is not even resolved).
    uses_template: ClassVar[bool] = True
    #: ``data.packing: true`` is allowed (several examples per row, see :mod:`lit_factory.data.packing`).
    can_pack: ClassVar[bool] = False
    #: Rows are always blocks of ``cutoff_len`` tokens (so nothing is truncated and no row is "dropped").
    always_packs: ClassVar[bool] = False
    #: Batch rows per example (pairwise: a chosen and a rejected row).
    rows_per_example: ClassVar[int] = 1
    #: Rows may carry images (the model's image plugin then batches them as the model's inputs).
    images: ClassVar[bool] = False
    #: Rows carry loss labels (False: generation prompts).
    labelled: ClassVar[bool] = True
    #: What each of :meth:`sequences`' token sequences of a row is called (in ``lit-factory data``).
    sequence_names: ClassVar[tuple[str, ...]] = ("sample",)
    #: The progress-bar label of the tokenising map.
    progress_label: ClassVar[str] = "Tokenizing"

    @property
    def key(self) -> str:
        """The built-in name, or ``module.Class`` for an objective of your own (see :func:`objective_key`)."""
        return objective_key(type(self))

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def fingerprint(self) -> tuple[str, str]:
        """Part of the tokenised rows' cache key: the key, and the source of an objective defined outside this
        package (whose edits the package's code digest would not see)."""
        import hashlib
        import inspect

        if type(self).__module__ == __name__:
            return self.key, ""
        try:
            source = inspect.getsource(type(self))
        except (OSError, TypeError):  # defined interactively: no source to hash
            source = ""
        return self.key, hashlib.sha256(source.encode()).hexdigest()

    # ---- the dataset and the data module's settings ------------------------------------------------------------
    def check(self, spec: "DatasetSpec") -> None:
        """Raise one line naming the entry and the fix when the dataset's kind does not fit this objective."""

    def check_settings(self, batch_size: int, packing: bool) -> None:
        """Raise one line naming the data module's field and the fix when a setting does not fit this objective."""
        if packing and not self.can_pack:
            raise LitFactoryError(f"data.packing applies to the supervised objective, not {self.key!r} (pretrain "
                                  "always packs). Fix: set packing: false.")

    def _one_response_per_row(self, spec: "DatasetSpec") -> None:
        if spec.ranking:
            raise LitFactoryError(
                f"{_where(spec)} is a preference (ranking) dataset; the {self.name} objective needs one response per "
                "row. Fix: use it with a pairwise stage (DPO, ORPO, SimPO, reward), or pick another dataset."
            )

    # ---- rows -> token columns -----------------------------------------------------------------------------------
    def rows(self, dataset: "Dataset", spec: "DatasetSpec", num_proc: int | None = None) -> "Dataset":
        """The rows :meth:`encode` reads: the dataset aligned to standard rows (see :mod:`lit_factory.data.align`)."""
        from lit_factory.data.align import align_dataset

        return align_dataset(dataset, spec, num_proc)

    def encoder(self, encoding: Encoding) -> Callable[..., dict[str, list]]:
        """The batched map function (``with_indices``) from :meth:`rows` to :attr:`columns`."""
        return encoder(self, encoding)

    def encode(self, batch: dict[str, list], images: dict[str, list] | None,
               encoding: Encoding) -> Iterable[dict[str, Any]]:
        """The token columns of each row of a batch of standard rows that keeps a loss token, media columns
        included; ``images``: the rows' expanded messages, image paths and image-token counts (image plugin only).
        By default row by row (:meth:`encode_row`)."""
        for index in range(len(batch["messages"])):
            columns = self.encode_row(batch, index, encoding)
            if columns is not None:
                yield {**columns, **{key: batch[key][index] for key in MEDIA if key in batch}}

    def encode_row(self, batch: dict[str, list], index: int, encoding: Encoding) -> dict[str, Any] | None:
        """The token columns of row ``index`` of ``batch``, or None to leave the row out."""
        raise NotImplementedError(f"{type(self).__name__} must define encode_row (or encode)")

    # ---- batches -------------------------------------------------------------------------------------------------
    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        """The collator that pads this objective's rows into the batch format its stages read."""
        raise NotImplementedError(f"{type(self).__name__} must define collator")

    def window_options(self) -> dict[str, Any] | None:
        """Options of the training loader's step windows (:mod:`lit_factory.data.windows`) for token-level losses,
        which divide by the loss tokens of the whole optimizer step (``Stage.token_mean``); None: no windows."""
        return None

    def drop_last(self, rows: int, batch_size: int) -> bool:
        """Drop the last, incomplete training batch of a dataset of ``rows`` rows."""
        return False

    def sequences(self, row: dict[str, Any]) -> Rows:
        """A prepared row as (ids, labels) token sequences, labels None when the row has none."""
        return [(row["input_ids"], row.get("labels", row["input_ids"]))]


def _where(spec: "DatasetSpec") -> str:
    return f"{spec.info_file}: entry {spec.name!r}"


def _reply_sequence(prompt: list[int], reply: list[int]) -> tuple[list[int], list[int]]:
    return prompt + reply, [IGNORE_INDEX] * len(prompt) + reply


class Supervised(Objective):
    """The assistant replies of conversations: ``input_ids`` and ``labels`` (-100 outside the loss), truncated to
    ``cutoff_len`` as LLaMA-Factory does; optionally packed; rows may carry images."""

    name = "supervised"
    columns = ("input_ids", "labels")
    can_pack = True
    images = True

    def check(self, spec: "DatasetSpec") -> None:
        self._one_response_per_row(spec)

    def encode(self, batch: dict[str, list], images: dict[str, list] | None,
               encoding: Encoding) -> Iterable[dict[str, Any]]:
        # All rows' texts in one tokenizer call (the fast tokenizer batches them in Rust).
        bos_token, eos_token = special_tokens(encoding.tokenizer)
        rendered = [
            [piece for turn in encoding.template.render_turns(messages, system, bos_token, eos_token, tools)
             for piece in turn]
            for messages, system, tools in zip(images["messages"] if images else batch["messages"],
                                               batch["system"], batch["tools"])
        ]
        for i, encoded in enumerate(tokenize_pieces_batch(rendered, encoding.tokenizer)):
            ids, labels = assemble_supervised(encoded, encoding.cutoff_len, encoding.train_on_prompt,
                                              encoding.mask_history, encoding.truncation_side)
            if images and ids.count(encoding.image_plugin.image_token_id) != images["tokens"][i]:
                continue  # cutoff_len cut into an image's tokens (counted with the rows without loss)
            if any(label != IGNORE_INDEX for label in labels):
                row_media = {key: batch[key][i] for key in MEDIA if key in batch}
                if images:
                    row_media["images"] = images["paths"][i]
                yield {"input_ids": ids, "labels": labels, **row_media}

    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        if settings.packing:
            from lit_factory.data.packing import PackedCollator

            return PackedCollator(pad_token_id)
        return PaddingCollator(pad_token_id)

    def window_options(self) -> dict[str, Any] | None:
        return {"chosen_only": False}


class PreTrain(Objective):
    """Plain text (the entry's ``prompt`` column, else ``text``): every document and an eos, concatenated and cut
    into blocks of exactly ``cutoff_len`` tokens (the remainder of each map batch of 1,000 documents is dropped);
    every token is its own target. No chat template."""

    name = "pretrain"
    columns = ("input_ids",)
    uses_template = False
    always_packs = True
    progress_label = "Packing"

    def rows(self, dataset: "Dataset", spec: "DatasetSpec", num_proc: int | None = None) -> "Dataset":
        from lit_factory.data.align import align_text

        return align_text(dataset, spec)

    def encoder(self, encoding: Encoding) -> Callable[..., dict[str, list]]:
        def pack_batch(batch: dict[str, list], indices: list[int] | None = None) -> dict[str, list]:
            return {"input_ids": pack_pretrain_blocks(batch["text"], encoding.tokenizer, encoding.cutoff_len)}

        return pack_batch

    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        return PaddingCollator(pad_token_id)

    def window_options(self) -> dict[str, Any] | None:
        return {"chosen_only": False}


class Pairwise(Objective):
    """Ranking rows: the prompt and the chosen and rejected replies stored apart (``prompt_ids``, ``chosen_ids``,
    ``rejected_ids``), batched as n chosen rows, then the same n prompts with their rejected replies."""

    name = "pairwise"
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    rows_per_example = 2
    sequence_names = ("chosen", "rejected")

    def check(self, spec: "DatasetSpec") -> None:
        if not spec.ranking:
            raise LitFactoryError(
                f"{_where(spec)} is not a ranking dataset; objective {self.name!r} needs chosen/rejected replies. "
                "Fix: set \"ranking\": true with chosen/rejected columns, or use a supervised stage."
            )

    def encode_row(self, batch: dict[str, list], index: int, encoding: Encoding) -> dict[str, Any] | None:
        prompt, (chosen, rejected) = encode_prompt_and_replies(
            batch["messages"][index], [batch["chosen"][index], batch["rejected"][index]], encoding.tokenizer,
            encoding.template, encoding.cutoff_len, batch["system"][index], batch["tools"][index],
            encoding.truncation_side)
        if not (chosen and rejected):
            return None
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}

    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        return PairwiseCollator(pad_token_id)

    def window_options(self) -> dict[str, Any] | None:
        return {"chosen_only": True}  # the token-level terms (NLL/SFT) are on the chosen rows

    def sequences(self, row: dict[str, Any]) -> Rows:
        return [_reply_sequence(row["prompt_ids"], row[key]) for key in ("chosen_ids", "rejected_ids")]


class KTO(Objective):
    """Rows with a desirable/undesirable flag: ``prompt_ids``, ``completion_ids`` (the last reply) and ``kto_tag``;
    batches add prompt i with the completion of row i-1 for the KL reference point (so they need two rows)."""

    name = "kto"
    columns = ("prompt_ids", "completion_ids", "kto_tag")

    def check(self, spec: "DatasetSpec") -> None:
        self._one_response_per_row(spec)
        if not spec.column("kto_tag"):
            raise LitFactoryError(
                f"{_where(spec)} has no kto_tag column; objective {self.name!r} needs a desirable/undesirable flag "
                "per row. Fix: add \"columns\": {\"kto_tag\": \"<bool column>\"} to the entry."
            )

    def check_settings(self, batch_size: int, packing: bool) -> None:
        if batch_size < 2:
            raise LitFactoryError(f"data.batch_size={batch_size}: KTO pairs each prompt with another row's completion "
                                  "for its KL term. Fix: batch_size of at least 2.")
        super().check_settings(batch_size, packing)

    def encode_row(self, batch: dict[str, list], index: int, encoding: Encoding) -> dict[str, Any] | None:
        messages = batch["messages"][index]
        prompt, (completion,) = encode_prompt_and_replies(
            messages[:-1], [messages[-1]], encoding.tokenizer, encoding.template, encoding.cutoff_len,
            batch["system"][index], batch["tools"][index], encoding.truncation_side)
        if not completion:
            return None
        return {"prompt_ids": prompt, "completion_ids": completion, "kto_tag": batch["kto_tag"][index]}

    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        return KTOCollator(pad_token_id, settings.cutoff_len)

    def drop_last(self, rows: int, batch_size: int) -> bool:
        return rows % batch_size == 1  # KTO's mismatched pairs need two rows in every batch

    def sequences(self, row: dict[str, Any]) -> Rows:
        return [_reply_sequence(row["prompt_ids"], row["completion_ids"])]


class Prompt(Objective):
    """Generation prompts (the conversation up to its last reply; its last ``cutoff_len`` tokens) as
    ``prompt_ids``, with the reference reply as text (``response``, "" when none), LEFT padded in batches."""

    name = "prompt"
    columns = ("prompt_ids", "response")
    labelled = False

    def encode_row(self, batch: dict[str, list], index: int, encoding: Encoding) -> dict[str, Any] | None:
        messages = batch["messages"][index]
        has_reply = len(messages) % 2 == 0
        context = messages[:-1] if has_reply else messages
        prompt = encode_prompt(context, encoding.tokenizer, encoding.template, encoding.cutoff_len,
                               batch["system"][index], batch["tools"][index])
        reply = messages[-1]["content"] if has_reply else batch.get("chosen", [""] * len(batch["messages"]))[index]
        return {"prompt_ids": prompt, "response": reply}

    def collator(self, pad_token_id: int, settings: "Preprocessing") -> Callable[[list[dict]], dict[str, Any]]:
        return PromptCollator(pad_token_id)

    def sequences(self, row: dict[str, Any]) -> Rows:
        return [(row["prompt_ids"], None)]


#: The built-in objectives by name.
OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (Supervised, PreTrain, Pairwise, KTO, Prompt)}


def objective_key(objective: type[Objective]) -> str:
    """How an objective class is written where a value must stay plain text (the CLI's link into the data module,
    hyperparameters, checkpoints): its built-in name, else its import path ``module.Class``."""
    if OBJECTIVES.get(objective.name) is objective:
        return objective.name
    return f"{objective.__module__}.{objective.__qualname__}"


def objective_component(value: Union[str, type[Objective], Objective]) -> Objective:
    """The objective ``value`` names: a built-in name, the import path of an :class:`Objective` subclass, the
    class itself or an instance."""
    if isinstance(value, Objective):
        return value
    if isinstance(value, type) and issubclass(value, Objective):
        return value()
    if isinstance(value, str) and value in OBJECTIVES:
        return OBJECTIVES[value]()
    if isinstance(value, str) and "." in value:
        from importlib import import_module

        module, _, name = value.rpartition(".")
        try:
            found = getattr(import_module(module), name)
        except (ImportError, AttributeError):
            found = None
        if isinstance(found, type) and issubclass(found, Objective):
            return found()
    raise LitFactoryError(f"data.objective={value!r} is unknown. Fix: use one of {list(OBJECTIVES)}, or a subclass "
                          "of lit_factory.data.objectives.Objective.")
