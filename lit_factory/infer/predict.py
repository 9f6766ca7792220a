"""Batch prediction (``lit-factory predict``): what ``Stage.predict_step`` runs and what it writes at the end.

Per batch of left-padded prompts: generate, decode, keep prompt / reference / prediction. At the end, into the run
directory: ``generated_predictions.jsonl`` (one ``{"prompt", "label", "predict"}`` per example, LLaMA-Factory's file
name and keys) and ``predict_results.json`` (BLEU-4, ROUGE-1/2/L in percent, runtime and throughput). Both files are
written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lit_factory.infer.engine import GenerationArgs, generate_batch
from lit_factory.io import write_text_atomically

PREDICTIONS_FILE = "generated_predictions.jsonl"
METRICS_FILE = "predict_results.json"


def predict_batch(
    model: Any, tokenizer: Any, batch: dict[str, Any], generation: GenerationArgs, stop_words: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Generate for one predict batch (``input_ids``/``attention_mask`` left padded, ``labels_text``)."""
    replies = generate_batch(model, tokenizer, batch["input_ids"], batch["attention_mask"], generation, stop_words)
    labels = batch.get("labels_text") or [""] * len(replies)
    rows = []
    for ids, mask, label, reply in zip(batch["input_ids"], batch["attention_mask"], labels, replies):
        prompt = tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=False)
        rows.append({"prompt": prompt, "label": label, "predict": reply.text,
                     "completion_tokens": reply.completion_tokens})
    return rows


def write_predictions(
    rows: list[dict[str, Any]], directory: str | Path, seconds: float, generation: GenerationArgs
) -> dict[str, Any]:
    """Write the predictions and their metrics into ``directory``; returns the metrics."""
    from lit_factory.eval.similarity import similarity_scores

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generated_tokens = sum(row["completion_tokens"] for row in rows)
    metrics: dict[str, Any] = similarity_scores([r["predict"] for r in rows], [r["label"] for r in rows])
    metrics.update({
        "samples": len(rows),
        "predict_runtime": seconds,
        "samples_per_second": len(rows) / max(seconds, 1e-9),
        "generated_tokens_per_second": generated_tokens / max(seconds, 1e-9),
        "generation": asdict(generation),
    })
    lines = [json.dumps({k: r[k] for k in ("prompt", "label", "predict")}, ensure_ascii=False) for r in rows]
    write_text_atomically(directory / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    write_text_atomically(directory / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False))
    return metrics
