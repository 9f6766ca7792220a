"""`lit-factory predict --config recipes/predict/sft.yaml`: batched generation over the data spec, the predictions
file and its metrics, checked against one-conversation-at-a-time generation and the raw data files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_factory.data.templates import get_template
from lit_factory.eval.similarity import similarity_scores
from lit_factory.infer.engine import ChatEngine, GenerationArgs
from lit_factory.model.builder import ModelArgs, build_inference_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SPARROW = str(ROOT / "lit_factory" / "assets" / "sparrow-tokenizer")
DEMO = ROOT / "lit_factory" / "assets" / "demo"
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "initializer_range": 0.5}


def reference_conversations() -> list[list[dict[str, str]]]:
    """The first 3 rows of each demo dataset, read straight from the files."""
    alpaca = json.loads((DEMO / "sparrow_sft.json").read_text())[:3]
    dialogues = json.loads((DEMO / "sparrow_dialogues.json").read_text())[:3]
    roles = {"human": "user", "gpt": "assistant"}
    return [[{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
            for row in alpaca] + [[{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]
                                  for row in dialogues]


@pytest.mark.slow
def test_predict_writes_predictions_and_metrics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = ModelArgs(config=TINY, tokenizer=SPARROW)
    tokenizer = build_tokenizer(args)
    model = build_inference_model(args, tokenizer)
    model.save_pretrained(tmp_path / "model")

    result = subprocess.run(
        [sys.executable, "-m", "lit_factory", "predict", "--config", str(ROOT / "recipes" / "predict" / "sft.yaml"),
         "--model.init_args.model.path", str(tmp_path / "model"),
         "--model.init_args.generation.max_new_tokens", "8",
         "--data.init_args.dataset", "[sparrow_sft, sparrow_dialogues]", "--data.init_args.max_samples", "3",
         "--data.init_args.eval_batch_size", "4", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "predict" / "version_0"
    rows = [json.loads(line) for line in (run / "generated_predictions.jsonl").read_text().splitlines()]
    conversations = reference_conversations()
    assert [row["label"] for row in rows] == [c[-1]["content"] for c in conversations]

    # Each prediction equals greedy generation for that conversation alone (no padding, no batch).
    engine = ChatEngine(model, tokenizer, get_template("chatml"), GenerationArgs(max_new_tokens=8, temperature=0))
    for row, conversation in zip(rows, conversations):
        assert row["prompt"] == tokenizer.decode(engine.encode(conversation[:-1]))
        assert row["predict"] == engine.chat(conversation[:-1]).text

    metrics = json.loads((run / "predict_results.json").read_text())
    expected = similarity_scores([r["predict"] for r in rows], [r["label"] for r in rows])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["samples"] == 6 and metrics["samples_per_second"] > 0 and metrics["generated_tokens_per_second"] > 0
    assert metrics["generation"]["max_new_tokens"] == 8
