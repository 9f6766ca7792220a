"""BLEU-4 and ROUGE of predictions, checked by hand and against torchmetrics on the same token sequences."""

from __future__ import annotations

import math

import pytest

from lit_factory.eval.similarity import segment, similarity_scores


def test_segment_splits_cjk_per_character_and_keeps_words() -> None:
    assert segment("Hello, world! 你好世界。GPT-4o 很好") == [
        "Hello", ",", "world", "!", "你", "好", "世", "界", "。", "GPT", "-", "4o", "很", "好"]
    assert segment("abc中文def") == ["abc", "中", "文", "def"]
    assert segment("  ") == []


def test_bleu4_by_hand() -> None:
    # hypothesis "the cat sat on the mat", reference "the cat is on the mat": clipped n-gram precisions 5/6, 3/5,
    # 1/4 and 0/3; NLTK's method 3 replaces the k-th zero count by 1/2^k, so p4 = (1/2)/3. Same lengths: no brevity
    # penalty. BLEU = exp(mean(log p_n)).
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)
    scores = similarity_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores["bleu-4"] == pytest.approx(100 * expected)
    assert similarity_scores(["a b c d e"], ["a b c d e"])["bleu-4"] == pytest.approx(100)


def test_bleu4_matches_torchmetrics_when_no_smoothing_applies() -> None:
    from torchmetrics.text import BLEUScore

    pairs = [("the quick brown fox jumps over the dog", "the quick brown fox jumps over the lazy dog"),
             ("我们今天去公园散步了", "我们今天去公园散步吧")]
    for prediction, reference in pairs:
        reference_bleu = BLEUScore(n_gram=4)([" ".join(segment(prediction))], [[" ".join(segment(reference))]])
        assert similarity_scores([prediction], [reference])["bleu-4"] == pytest.approx(100 * float(reference_bleu),
                                                                                        abs=1e-4)


def test_rouge_by_hand_and_against_torchmetrics() -> None:
    from torchmetrics.text import ROUGEScore

    # 我爱北京 vs 我爱上海: unigrams 2 of 4 on both sides -> F1 0.5; bigrams 1 of 3 -> 1/3; LCS 2 -> 0.5.
    scores = similarity_scores(["我爱北京"], ["我爱上海"])
    assert scores["rouge-1"] == pytest.approx(50)
    assert scores["rouge-2"] == pytest.approx(100 / 3)
    assert scores["rouge-l"] == pytest.approx(50)

    predictions = ["the cat was found under the bed", "今天天气很好，我们去爬山", "totally unrelated"]
    references = ["the cat was under the bed", "今天天气不错，我们去散步", "the reference text"]
    torchmetrics_rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"), tokenizer=segment,
                                    normalizer=lambda text: text)
    reference_scores = torchmetrics_rouge(predictions, references)
    ours = similarity_scores(predictions, references)
    for ours_key, theirs_key in (("rouge-1", "rouge1"), ("rouge-2", "rouge2"), ("rouge-l", "rougeL")):
        assert ours[ours_key] == pytest.approx(100 * float(reference_scores[f"{theirs_key}_fmeasure"]), abs=1e-4)


def test_empty_sides_score_zero_and_averages_count_them() -> None:
    scores = similarity_scores(["the same five words here", ""], ["the same five words here", "reference"])
    assert scores == pytest.approx({"bleu-4": 50, "rouge-1": 50, "rouge-2": 50, "rouge-l": 50})
    assert similarity_scores([], []) == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    with pytest.raises(ValueError):
        similarity_scores(["one"], [])
