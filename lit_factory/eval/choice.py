"""``lit-factory eval``: MMLU / CMMLU / C-Eval style multiple-choice benchmarks from local files.

    lit-factory eval --model Qwen/Qwen2.5-0.5B-Instruct --task-dir evaluation --task mmlu --split test --n-shot 5

A task folder ``<task-dir>/<task>/`` holds ``mapping.json`` (subject -> ``{"name", "category"}``) and one CSV per
subject and split: ``<split>/<subject>_<split>.csv`` or ``<split>/<subject>.csv``, rows ``question,A,B,C,D,answer``
(a header row naming the columns, as C-Eval and CMMLU have, is recognised). The method is LLaMA-Factory's
(and MMLU's): the first ``n_shot`` rows of the ``dev`` split become solved user/assistant turns, the question
follows, the conversation is rendered with the chat template, and the answer is the letter whose token gets the
highest logit at the last position. Accuracy is reported per subject, per category (over all questions of the
category) and overall. ``lit_factory/assets/eval_sample/mmlu_sample`` is a tiny example task.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lit_factory.errors import LitFactoryError
from lit_factory.io import write_text_atomically

if TYPE_CHECKING:
    from lit_factory.data.templates import Template

CHOICES = ("A", "B", "C", "D")
SAMPLE_TASK_DIR = Path(__file__).resolve().parents[1] / "assets" / "eval_sample"

#: LLaMA-Factory's evaluation prompts: (subject line, one choice, answer cue).
PROMPTS = {
    "en": ("The following are multiple choice questions (with answers) about {subject}.\n\n", "\n{choice}. {content}",
           "\nAnswer:"),
    "zh": ("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "\n{choice}. {content}", "\n答案："),
}


@dataclass
class Question:
    """One multiple-choice question: text, the four options by letter, the right letter."""

    question: str
    options: dict[str, str]
    answer: str


@dataclass
class Subject:
    """A subject of a task: its display name, category and questions per split."""

    name: str
    category: str
    splits: dict[str, list[Question]] = field(default_factory=dict)


def read_questions(path: Path) -> list[Question]:
    """Rows of one subject CSV (MMLU without header, or C-Eval/CMMLU with a header row)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    first_row = 1
    if "question" in header and "answer" in header:
        columns = {name: header.index(name.lower()) for name in ("question", *CHOICES, "answer")}
        rows, first_row = rows[1:], 2
    elif len(rows[0]) == 6:
        columns = {name: index for index, name in enumerate(("question", *CHOICES, "answer"))}
    else:
        raise LitFactoryError(
            f"{path}: expected rows question,A,B,C,D,answer (6 columns) or a header naming them; got "
            f"{len(rows[0])} columns. Fix: convert the file to that layout."
        )
    questions = []
    for number, row in enumerate(rows, start=first_row):
        if len(row) <= max(columns.values()):
            raise LitFactoryError(f"{path}: row {number} has {len(row)} columns. Fix: quote cells that hold commas.")
        answer = row[columns["answer"]].strip().upper()
        if answer not in CHOICES:
            raise LitFactoryError(f"{path}: row {number} has answer {answer!r}. Fix: use one of A, B, C, D.")
        questions.append(Question(row[columns["question"]], {c: row[columns[c]] for c in CHOICES}, answer))
    return questions


def load_task(task_dir: str | Path, task: str, splits: tuple[str, ...]) -> dict[str, Subject]:
    """Subjects of ``<task_dir>/<task>`` (in ``mapping.json`` order) with the questions of ``splits``."""
    root = Path(task_dir) / task
    mapping_path = root / "mapping.json"
    if not mapping_path.is_file():
        raise LitFactoryError(
            f"--task {task!r}: no {mapping_path}. Fix: point --task-dir at the folder holding {task}/mapping.json."
        )
    mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    subjects = {}
    for key, info in mapping.items():
        subject = Subject(info.get("name", key), info.get("category", "Other"))
        for split in splits:
            candidates = [root / split / f"{key}_{split}.csv", root / split / f"{key}.csv"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise LitFactoryError(f"--task {task!r}: subject {key!r} has no {candidates[0]} (or {candidates[1]}). "
                                      "Fix: add the file or drop the subject from mapping.json.")
            subject.splits[split] = read_questions(path)
        subjects[key] = subject
    return subjects


def question_messages(
    question: Question, shots: list[Question], subject_name: str, lang: Literal["en", "zh"] = "en"
) -> list[dict[str, str]]:
    """The k-shot conversation for ``question``: solved ``shots``, then the question as the last user turn."""
    subject_line, choice_format, answer_cue = PROMPTS[lang]

    def text(item: Question) -> str:
        options = "".join(choice_format.format(choice=c, content=item.options[c]) for c in CHOICES)
        return item.question + options + answer_cue

    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": text(shot)}, {"role": "assistant", "content": shot.answer}]
    messages.append({"role": "user", "content": text(question)})
    messages[0]["content"] = subject_line.format(subject=subject_name) + messages[0]["content"]
    return messages


def choice_token_ids(tokenizer: Any) -> list[int]:
    """The token id of each letter (the last token of its encoding, as LLaMA-Factory takes it)."""
    return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in CHOICES]


def pick_answers(model: Any, tokenizer: Any, prompts: list[list[int]], batch_size: int = 4) -> list[str]:
    """The letter whose token has the highest logit after each prompt (batched, left-padded)."""
    import torch

    letter_ids = torch.tensor(choice_token_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in chunk])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk])
        device = next(model.parameters()).device
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        best = logits[:, -1, letter_ids.to(device)].argmax(dim=-1)
        answers += [CHOICES[index] for index in best.tolist()]
    return answers


def accuracy_table(subjects: dict[str, Subject], correct: dict[str, list[bool]]) -> dict[str, Any]:
    """Accuracy per subject, per category (pooled over its questions) and overall, with counts."""

    def entry(flags: list[bool]) -> dict[str, Any]:
        return {"accuracy": sum(flags) / len(flags) if flags else 0.0, "correct": sum(flags), "total": len(flags)}

    by_category: dict[str, list[bool]] = {}
    for key, flags in correct.items():
        by_category.setdefault(subjects[key].category, []).extend(flags)
    return {
        "subjects": {key: entry(flags) for key, flags in correct.items()},
        "categories": {name: entry(flags) for name, flags in sorted(by_category.items())},
        "average": entry([flag for flags in correct.values() for flag in flags]),
    }


def evaluate_choices(
    model: Any,
    tokenizer: Any,
    template: "Template",
    subjects: dict[str, Subject],
    split: str = "test",
    n_shot: int = 5,
    lang: Literal["en", "zh"] = "en",
    batch_size: int = 4,
) -> dict[str, Any]:
    """Score every question of ``split`` (see the module doc); returns :func:`accuracy_table` plus settings."""
    from lit_factory.data.tokenize import special_tokens

    bos_token, eos_token = special_tokens(tokenizer)
    correct = {}
    for key, subject in subjects.items():
        shots = subject.splits.get("dev", [])[:n_shot]
        prompts = [
            tokenizer.encode(
                template.render_prompt(question_messages(q, shots, subject.name, lang), None, bos_token, eos_token),
                add_special_tokens=False,
            )
            for q in subject.splits[split]
        ]
        picked = pick_answers(model, tokenizer, prompts, batch_size)
        correct[key] = [answer == q.answer for answer, q in zip(picked, subject.splits[split])]
    return {**accuracy_table(subjects, correct), "split": split, "n_shot": n_shot, "template": template.name}


def format_table(results: dict[str, Any]) -> str:
    """Categories and the average as percentages, one per line."""
    lines = [f"{name:>20}: {100 * row['accuracy']:.2f}  ({row['correct']}/{row['total']})"
             for name, row in [*results["categories"].items(), ("Average", results["average"])]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry of ``lit-factory eval``."""
    from lit_factory.infer.options import model_parser

    parser = model_parser("lit-factory eval", "Multiple-choice benchmark (MMLU, CMMLU, C-Eval layout).", False)
    parser.add_argument("--task-dir", default=str(SAMPLE_TASK_DIR), help="Folder holding the task folders.")
    parser.add_argument("--task", default="mmlu_sample", help="Task folder name inside --task-dir.")
    parser.add_argument("--split", default="test", help="Split scored (test, val, ...); k-shot examples come from dev.")
    parser.add_argument("--n-shot", type=int, default=5, help="Solved dev examples before each question.")
    parser.add_argument("--lang", default="en", choices=["en", "zh"], help="Prompt wording (MMLU: en; C-Eval: zh).")
    parser.add_argument("--batch-size", type=int, default=4, help="Questions per forward pass.")
    parser.add_argument("--save-dir", default=None, help="Write results.json (per subject and category) here.")
    options = parser.parse_args(argv)
    if options.n_shot < 0 or options.batch_size < 1:
        raise LitFactoryError("--n-shot must be >= 0 and --batch-size >= 1")
    splits = (options.split,) if options.n_shot == 0 else ("dev", options.split)
    subjects = load_task(options.task_dir, options.task, tuple(dict.fromkeys(splits)))

    import torch

    from lit_factory.data.templates import get_template
    from lit_factory.infer.options import model_args_from
    from lit_factory.model.builder import build_inference_model, build_tokenizer

    model_args = model_args_from(options)
    tokenizer = build_tokenizer(model_args)
    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_inference_model(model_args, tokenizer, torch.device(device))
    results = evaluate_choices(model, tokenizer, get_template(options.template, tokenizer), subjects,
                               options.split, options.n_shot, options.lang, options.batch_size)
    print(format_table(results))
    if options.save_dir is not None:
        save_results(results, Path(options.save_dir))
    return 0


def save_results(results: dict[str, Any], directory: Path) -> Path:
    """Write ``results.json`` into ``directory`` atomically (temp file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "results.json"
    write_text_atomically(target, json.dumps(results, indent=2, ensure_ascii=False))
    print(f"Saved results to {target}")
    return target
