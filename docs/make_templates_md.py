"""Write docs/templates.md: every chat template name, what it is (a file, an alias, a file that extends another),
the reference its format comes from (the first comment line of its YAML) and how tests check it.

    python docs/make_templates_md.py            # rewrite docs/templates.md
    python docs/make_templates_md.py --stdout   # print it (tests compare this with the file)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# How tests check a family against its reference. The shared references are the parametrisation of
# tests/data/test_data_template_families.py (a test asserts the two lists agree).
SHARED_REFERENCES = ["qwen", "chatml", "llama3", "llama2", "mistral", "gemma", "phi", "phi_small", "zephyr", "vicuna",
                     "alpaca", "amberchat", "chatqa", "falcon", "openchat", "solar", "granite", "saiga"]
TOKEN_PARITY = {"qwen": "qwen2.5-instruct", "mistral": "mistral-7b-instruct-v0.1"}
FIXTURE_REFERENCES = {"qwen3": "qwen3.jinja (Qwen3, official)", "gemma2": "gemma-2-it.jinja (Gemma 2, official)",
                      "phi4": "phi-4.jinja (Phi-4, official)"}
LLAMAFACTORY_NAMES = ROOT / "tests" / "fixtures" / "chat_templates" / "llamafactory_template_names.txt"
# LLaMA-Factory names whose text is not LLaMA-Factory's, and why. tests/data/test_data_template_reasoning.py renders every
# LLaMA-Factory name both ways (its template.py's formats in tests/fixtures/chat_templates/) and asserts that exactly
# these differ.
_CHATML = "bos first, as the reference chatml template writes it (LLaMA-Factory: none)"
_VICUNA = "the reference Vicuna template's newlines and bos (LLaMA-Factory: 'USER: ... ASSISTANT:' on one line)"
_MISTRAL = ("Mistral v0.1's '[INST] ... [/INST]' with the system prompt before it, as its official template and "
            "tokenizer (LLaMA-Factory writes v3's '[INST] ...[/INST]' with the system prompt inside)")
_ROLE_ENDS = ("a reply ends where the next role token starts (LLaMA-Factory also appends the tokenizer's eos once, "
              "at the end of the sequence)")
_TURN_ENDS = ("the end-of-turn token ends each reply (LLaMA-Factory also appends the tokenizer's eos once, at the "
              "end of the sequence)")
_EOS_EACH = "every reply ends with eos, so the model learns to stop (LLaMA-Factory: one eos at the end of the sequence)"
_EOS_FIRST = ("every reply ends with eos, before its trailing whitespace (LLaMA-Factory: one eos at the end of the "
              "sequence, after it)")
LF_DIFFERENCES = {
    "alpaca": "the reference's system block and bos", "chatml": _CHATML, "chatml_de": _CHATML, "dbrx": _CHATML,
    "opencoder": _CHATML, "cohere": "<|END_OF_TURN_TOKEN|> (Command-R's eos) ends a reply, as its template",
    "deepseek": "a space after 'Assistant:', as the model's template",
    "deepseekcoder": "a newline after the system prompt, as the model's template", "default": "bos first",
    "falcon": "the reference falcon-instruct format", "llama2": "' reply </s>', as the official Llama 2 template",
    "llama2_zh": "' reply </s>', as the official Llama 2 template", "mistral": _MISTRAL, "llava_next_mistral": _MISTRAL,
    "llava_next_video_mistral": _MISTRAL, "openchat": "<|end_of_turn|>, as the official OpenChat 3.5 template",
    "phi_small": "bos first, as the reference (LLaMA-Factory's prefix slot writes nothing)",
    "solar": "bos and a blank line after each reply, as the reference", "vicuna": _VICUNA, "llava": _VICUNA,
    "llava_next": _VICUNA, "llava_next_video": _VICUNA, "video_llava": _VICUNA,
    "zephyr": "a newline after each </s>, as the official template",
    **dict.fromkeys(["chatglm3", "glm4", "glm4_moe", "glm4v", "glm4_5v", "glm_ocr", "glm4_7", "glmz1", "aeva"],
                    _ROLE_ENDS),
    **dict.fromkeys(["gemma2", "dots_ocr"], _TURN_ENDS), **dict.fromkeys(["fewshot", "yi_vl"], _EOS_FIRST),
    **dict.fromkeys(["bailing", "bailing_v2", "breeze", "hy_dense_1_8b", "hy_dense_7b", "index"], _EOS_EACH),
}


def llamafactory_text(name: str, lf_names: set[str]) -> str:
    if name not in lf_names:
        return ""
    return f"differs: {LF_DIFFERENCES[name]}" if name in LF_DIFFERENCES else "same"


def parity(name: str) -> str:
    checks = []
    if name in SHARED_REFERENCES:
        checks.append("string + mask vs ../shared/chat-templates")
    if name in FIXTURE_REFERENCES:
        checks.append(f"string + mask vs tests/fixtures/chat_templates/{FIXTURE_REFERENCES[name]}")
    if name in TOKEN_PARITY:
        checks.append(f"token for token vs the {TOKEN_PARITY[name]} tokenizer")
    return "; ".join(checks) or "none on disk (format as the source says)"


def reference(path: Path) -> str:
    """The first sentence of the file's opening comment, without a leading ``name:``."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    prefix = f"{path.stem}:"
    text = text[len(prefix):].strip() if text.startswith(prefix) else text
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def render() -> str:
    import yaml

    from lit_factory.data.templates import TEMPLATES_DIR, available_templates, get_template

    lf_names = set(LLAMAFACTORY_NAMES.read_text(encoding="utf-8").split())
    rows = []
    for name in available_templates():
        path = TEMPLATES_DIR / f"{name}.yaml"
        template = get_template(name)
        if not path.is_file():
            kind, source = f"alias of `{template.name}`", "(the same format)"
            check = parity(template.name)
        else:
            base = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("extends")
            kind = f"extends `{base}`" if base else "file"
            source, check = reference(path).replace("|", "\\|"), parity(name)
        thinking = "yes" if template.thought_words else ""
        rows.append(f"| `{name}` | {kind} | {thinking} | {source} | {check} | {llamafactory_text(name, lf_names)} |")
    files = len(list(TEMPLATES_DIR.glob("*.yaml")))
    return "\n".join([
        "# Chat templates",
        "",
        "Generated by `python docs/make_templates_md.py` from `templates/*.yaml`; do not edit by hand.",
        "",
        f"{len(rows)} names: {files} files in `templates/` plus the aliases they list. Every template name that",
        "LLaMA-Factory registers (`src/llamafactory/data/template.py`) is among them, so an LLaMA-Factory YAML's",
        "`template:` keeps working; multimodal families get their text format (placeholders are the processor's).",
        "\"Thinking\" marks reasoning templates (`thought_words`; see `enable_thinking` in the data options).",
        "\"LLaMA-Factory text\" compares a one- and a two-turn conversation with what LLaMA-Factory's template writes",
        "(reasoning templates: one turn; LLaMA-Factory keeps every reply's thought, the official templates only the",
        "latest's, as we do); where ours follows the model's official template instead, the reason is given.",
        "",
        "| name | kind | thinking | format from | parity test | LLaMA-Factory text |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])


def main() -> None:
    text = render()
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
        return
    target = ROOT / "docs" / "templates.md"
    partial = target.with_suffix(".md.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)


if __name__ == "__main__":
    main()
