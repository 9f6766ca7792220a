"""Text similarity of predictions to references: BLEU-4 and ROUGE-1/2/L, averaged over examples, in percent.

The definitions follow LLaMA-Factory's ``ComputeSimilarity`` so figures compare: sentence-level BLEU-4 from NLTK with
smoothing method 3 (NIST geometric sequence), and ROUGE F1 — here from Google's ``rouge-score`` package. Both score
token sequences; :func:`segment` makes them: each CJK character is one token (LLaMA-Factory segments Chinese with
jieba; single characters need no dictionary and are the usual fallback), runs of other letters and digits are words,
and each punctuation mark is a token. ``rouge-score``'s own tokenizer would delete every non-ASCII character.
"""

from __future__ import annotations

import re
from typing import Iterable

# Han (with extension A and compatibility ideographs), kana, Hangul syllables and CJK punctuation: one token each.
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff00-\uffef"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s{_CJK}]|_")

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def segment(text: str) -> list[str]:
    """Split ``text`` into tokens: CJK characters one by one, other words whole, punctuation marks alone."""
    return _TOKEN.findall(text)


class _Segmenter:
    """The tokenizer interface ``rouge_score.RougeScorer`` expects."""

    def tokenize(self, text: str) -> list[str]:
        return segment(text)


def similarity_scores(predictions: Iterable[str], references: Iterable[str]) -> dict[str, float]:
    """Mean sentence BLEU-4 and ROUGE-1/2/L F1 of ``predictions`` against ``references``, each in [0, 100].

    Pairs where either side has no token score 0 on every metric (as in LLaMA-Factory).
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Segmenter())
    smoothing = SmoothingFunction().method3
    totals = dict.fromkeys(METRICS, 0.0)
    count = 0
    for prediction, reference in zip(predictions, references, strict=True):
        count += 1
        hypothesis_tokens, reference_tokens = segment(prediction), segment(reference)
        if not hypothesis_tokens or not reference_tokens:
            continue
        totals["bleu-4"] += sentence_bleu([reference_tokens], hypothesis_tokens, smoothing_function=smoothing)
        rouge = scorer.score(reference, prediction)  # (target, prediction)
        totals["rouge-1"] += rouge["rouge1"].fmeasure
        totals["rouge-2"] += rouge["rouge2"].fmeasure
        totals["rouge-l"] += rouge["rougeL"].fmeasure
    return {name: 100.0 * total / count if count else 0.0 for name, total in totals.items()}
