"""Dataset preview for the Train tab: how many examples a dataset has and a few of them rendered with the chat
template, the loss-bearing part marked — through the same spec, loader, aligner and template the run uses."""

from __future__ import annotations

import html
from typing import Any, Optional

from lit_factory.errors import LitFactoryError


def load_tokenizer(path: str) -> Any:
    """A tokenizer for rendering (its bos/eos fill the template; ``auto`` templates look at it)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LitFactoryError(f"tokenizer {path!r}: could not load it ({reason}). Fix: give a tokenizer folder.") from None


def _segments_html(segments: list[tuple[str, bool]]) -> str:
    return "".join(
        f'<mark class="loss" title="loss">{html.escape(text)}</mark>' if loss else f"<span>{html.escape(text)}</span>"
        for text, loss in segments
    )


def render_row(row: dict[str, Any], template: Any, bos: str, eos: str) -> list[tuple[str, bool]]:
    """One aligned row as ``(text, is_loss_bearing)`` segments; ranking rows show chosen (loss) then rejected."""
    messages, system = row.get("messages") or [], row.get("system")  # None: the template's default
    if row.get("chosen") is not None and messages and messages[-1].get("role") == "user":
        chosen = template.render([*messages, {"role": "assistant", "content": str(row["chosen"])}], system, bos, eos)
        rejected = template.render([*messages, {"role": "assistant", "content": str(row["rejected"])}], system, bos, eos)
        last_reply = [segment for segment in rejected if segment[1]][-1:]
        return [*chosen, ("\n--- rejected ---\n", False), *last_reply]
    dialogue = [m for m in messages if m.get("role") in ("user", "assistant", "system")]
    if len(dialogue) != len(messages):  # tool turns: templates here render user/assistant only; show as text
        return [("\n".join(f"[{m['role']}] {m['content']}" for m in messages), False)]
    return template.render(messages, system, bos, eos)


def preview_datasets(
    dataset_dir: str, names: list[str], tokenizer_path: Optional[str], template_name: str, count: int = 3,
    workdir: Any = ".", pretrain: bool = False, max_samples: Optional[int] = None,
) -> tuple[str, str]:
    """``(summary, html)``: example counts per dataset and the first ``count`` rows of each, rendered.
    ``max_samples`` cuts each dataset to its first rows before alignment, as the run's pipeline does.
    ``workdir`` is the board's workspace (a ``Workspace`` or its folder): the dataset folder, the data files its
    ``dataset_info.json`` names and the tokenizer must lie in it (or be shipped; a hub id for the tokenizer)."""
    from lit_factory.data.align import align_dataset, align_text
    from lit_factory.data.loader import load_dataset_file
    from lit_factory.data.spec import get_dataset_spec
    from lit_factory.data.templates import get_template
    from lit_factory.data.tokenize import special_tokens

    if not names:
        raise LitFactoryError("datasets: none chosen. Fix: pick at least one dataset to preview.")
    from lit_factory.board.workspace import Workspace

    workspace = workdir if isinstance(workdir, Workspace) else Workspace(workdir)
    folder = workspace.path(dataset_dir, "dataset folder", "read")
    tokenizer = None
    if tokenizer_path:
        tokenizer = load_tokenizer(workspace.model_source(tokenizer_path, "tokenizer"))
    if template_name and template_name not in ("auto",) and ("/" in template_name or template_name.endswith(".yaml")):
        template_name = str(workspace.path(template_name, "template", "read"))
    bos, eos = special_tokens(tokenizer) if tokenizer is not None else ("", "")
    template = None if pretrain else get_template(template_name or "auto", tokenizer)
    summary, blocks = [], []
    for name in names:
        spec = get_dataset_spec(name, folder)
        # dataset_info.json may name any file ("file_name": "../../secret.json"); read only what lies in the
        # workspace (or ships with lit-factory).
        if spec.hub_id is None:
            workspace.path(spec.path, f"dataset {name!r} file", "read")
        raw = load_dataset_file(spec)
        if max_samples is not None and max_samples < len(raw):
            raw = raw.select(range(max_samples))
        if pretrain:
            aligned = align_text(raw, spec)
            column = aligned.column_names[0]
            rendered = [[(str(row[column]), True)] for row in aligned.select(range(min(count, len(aligned))))]
        else:
            aligned = align_dataset(raw, spec)
            rendered = [render_row(row, template, bos, eos) for row in aligned.select(range(min(count, len(aligned))))]
        summary.append(f"{name}: {len(aligned)} / {len(raw)}")
        blocks.append(f"<h4>{html.escape(name)}</h4>" + "".join(
            f'<pre class="sample">{_segments_html(segments)}</pre>' for segments in rendered
        ))
    return "; ".join(summary), "".join(blocks)
