"""`lit-factory data`: statistics and samples with the loss-bearing text marked, and one-line errors."""

from __future__ import annotations

import json

from lit_factory.cli import main


def test_preview_marks_the_replies_and_counts(peer_data_dir, shared_dir, capsys):
    status = main(["data", "--dataset-dir", str(peer_data_dir), "--dataset", "alpaca_en_demo,dpo_en_demo",
                   "--tokenizer", str(shared_dir / "tokenizers" / "qwen2.5-instruct"), "--template", "qwen",
                   "--max-samples", "3", "-n", "2", "--cutoff-len", "1024"])
    out = capsys.readouterr().out
    assert status == 0
    alpaca = json.loads((peer_data_dir / "alpaca_en_demo.json").read_text())
    dpo = json.loads((peer_data_dir / "dpo_en_demo.json").read_text())
    assert "== alpaca_en_demo: 3 examples (supervised)" in out
    assert "== dpo_en_demo: 3 examples (pairwise)" in out  # the objective the data is made for
    assert f"<|im_start|>assistant\n«{alpaca[0]['output']}<|im_end|>»" in out
    assert f"-- rejected 0\n" in out and f"<|im_start|>user\n{dpo[0]['conversations'][0]['value']}" in out
    assert "longer than cutoff_len=1024" in out and "tokens with loss:" in out and "p50" in out


def test_preview_from_a_recipe(capsys):
    assert main(["data", "--config", "recipes/quickstart.yaml", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "== sparrow_sft:" in out and "== sparrow_dialogues:" in out and "«" in out


def test_preview_errors_are_one_line(peer_data_dir, capsys):
    assert main(["data", "--dataset-dir", str(peer_data_dir), "--dataset", "nope", "--tokenizer", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-factory: error:") and "no dataset named 'nope'" in err and "\n" not in err
    assert main(["data", "--dataset", "alpaca_en_demo"]) == 2
    assert "no tokenizer given. Fix: --tokenizer" in capsys.readouterr().err
