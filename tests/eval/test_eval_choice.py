"""`lit-factory eval`: MMLU-style multiple choice on the bundled sample task."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_factory.data.templates import get_template
from lit_factory.errors import LitFactoryError
from lit_factory.eval.choice import (
    CHOICES, SAMPLE_TASK_DIR, choice_token_ids, evaluate_choices, load_task, question_messages, read_questions,
)
from lit_factory.model.builder import ModelArgs, build_inference_model, build_tokenizer

SPARROW = str(Path(__file__).resolve().parents[2] / "lit_factory" / "assets" / "sparrow-tokenizer")
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "tie_word_embeddings": False, "initializer_range": 0.5}
TASK = SAMPLE_TASK_DIR / "mmlu_sample"


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    args = ModelArgs(config=TINY, tokenizer=SPARROW)
    tokenizer = build_tokenizer(args)
    return build_inference_model(args, tokenizer), tokenizer


@pytest.fixture(scope="module")
def subjects() -> dict:
    return load_task(SAMPLE_TASK_DIR, "mmlu_sample", ("dev", "test"))


def raw_answers(subject: str) -> list[str]:
    """The answer column read straight from the CSV file (independent of our reader)."""
    with (TASK / "test" / f"{subject}_test.csv").open(newline="", encoding="utf-8") as handle:
        return [row[5] for row in csv.reader(handle)]


class LetterBias(torch.nn.Module):
    """Wraps a model and adds a large logit at the last position to the letter ``pick(prompt_text)`` names."""

    def __init__(self, model: torch.nn.Module, tokenizer, pick) -> None:
        super().__init__()
        self.model, self.tokenizer, self.pick = model, tokenizer, pick
        self.letter_ids = choice_token_ids(tokenizer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            letter = self.pick(self.tokenizer.decode(ids[mask.bool()]))
            output.logits[row, -1, self.letter_ids[CHOICES.index(letter)]] += 1000.0
        return output


def test_sample_task_layout(subjects: dict) -> None:
    assert list(subjects) == ["elementary_mathematics", "computer_science", "world_geography"]
    assert [len(s.splits["test"]) for s in subjects.values()] == [5, 4, 6]
    assert all(len(s.splits["dev"]) == 5 for s in subjects.values())
    assert {s.category for s in subjects.values()} == {"STEM", "Social Sciences"}
    first = subjects["computer_science"].splits["test"][0]
    assert first.question == "Which data structure is last in, first out?"  # a quoted cell with a comma
    assert first.options == {"A": "Queue", "B": "Stack", "C": "Graph", "D": "Array"} and first.answer == "B"


def test_prompt_is_llamafactory_format_and_renders_like_the_tokenizer(subjects: dict, tiny) -> None:
    _, tokenizer = tiny
    subject = subjects["elementary_mathematics"]
    messages = question_messages(subject.splits["test"][0], subject.splits["dev"][:1], subject.name)
    assert messages == [
        {"role": "user", "content": "The following are multiple choice questions (with answers) about elementary "
                                    "mathematics.\n\nWhat is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "What is 7 + 8?\nA. 15\nB. 14\nC. 16\nD. 13\nAnswer:"},
    ]
    rendered = get_template("chatml").render_prompt(messages)
    assert rendered == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_a_model_that_knows_the_answers_scores_100(subjects: dict, tiny) -> None:
    model, tokenizer = tiny
    answers = {q.question: q.answer for s in subjects.values() for q in s.splits["test"]}

    def right_letter(prompt: str) -> str:  # the question asked last is the one being scored
        return max(answers.items(), key=lambda item: prompt.rfind(item[0]))[1]

    results = evaluate_choices(LetterBias(model, tokenizer, right_letter), tokenizer, get_template("chatml"),
                               subjects, n_shot=5, batch_size=4)
    assert results["average"] == {"accuracy": 1.0, "correct": 15, "total": 15}
    assert all(row["accuracy"] == 1.0 for row in results["subjects"].values())


def test_accuracy_bookkeeping_with_a_model_that_always_says_a(subjects: dict, tiny) -> None:
    model, tokenizer = tiny
    results = evaluate_choices(LetterBias(model, tokenizer, lambda prompt: "A"), tokenizer, get_template("chatml"),
                               subjects, n_shot=2, batch_size=3)
    counts = {name: (raw_answers(name).count("A"), len(raw_answers(name))) for name in subjects}
    assert counts == {"elementary_mathematics": (1, 5), "computer_science": (1, 4), "world_geography": (2, 6)}
    for name, (correct, total) in counts.items():
        assert results["subjects"][name] == {"accuracy": correct / total, "correct": correct, "total": total}
    assert results["categories"]["STEM"] == {"accuracy": 2 / 9, "correct": 2, "total": 9}  # pooled, not averaged
    assert results["categories"]["Social Sciences"] == {"accuracy": 2 / 6, "correct": 2, "total": 6}
    assert results["average"] == {"accuracy": 4 / 15, "correct": 4, "total": 15}


def test_cli_matches_a_plain_forward_per_question(tmp_path: Path, subjects: dict, tiny) -> None:
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    result = subprocess.run(
        # --tokenizer: a tokenizer saved beside a qwen2 config reloads as Qwen2Tokenizer, which pre-tokenises
        # digits differently from the bundled one this test's reference uses.
        [sys.executable, "-m", "lit_factory", "eval", "--model", str(tmp_path / "model"), "--tokenizer", SPARROW,
         "--template", "chatml",
         "--n-shot", "3", "--batch-size", "4", "--save-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())

    template = get_template("chatml")
    letter_ids = [tokenizer.convert_tokens_to_ids(letter) for letter in CHOICES]
    for name, subject in subjects.items():
        correct = 0
        for question in subject.splits["test"]:  # one unpadded prompt at a time
            prompt = template.render_prompt(question_messages(question, subject.splits["dev"][:3], subject.name))
            ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1, letter_ids]
            correct += CHOICES[int(logits.argmax())] == question.answer
        assert saved["subjects"][name]["correct"] == correct
        assert saved["subjects"][name]["total"] == len(subject.splits["test"])
    assert "Average" in result.stdout and saved["n_shot"] == 3


def test_header_files_and_bad_input(tmp_path: Path) -> None:
    cmmlu = tmp_path / "cmmlu_style.csv"
    cmmlu.write_text(",Question,A,B,C,D,Answer\n0,一加一等于几？,1,2,3,4,B\n", encoding="utf-8")
    [question] = read_questions(cmmlu)
    assert (question.question, question.options["B"], question.answer) == ("一加一等于几？", "2", "B")
    bad = tmp_path / "bad.csv"
    bad.write_text("q,1,2,3,4,E\n", encoding="utf-8")
    with pytest.raises(LitFactoryError, match="row 1 has answer 'E'"):
        read_questions(bad)
    with pytest.raises(LitFactoryError, match="mapping.json"):
        load_task(tmp_path, "missing_task", ("test",))
