"""Build the quickstart's tokenizer (`assets/sparrow-tokenizer/`): a small byte-level BPE trained on the demo data,
with ChatML special tokens and chat template. Shipped prebuilt; rerun with `python -m lit_factory.assets.build_tokenizer`.

Byte-level BPE encodes any text (no unknown tokens), and a small vocabulary keeps the quickstart model tiny. The
normalizer and pre-tokenizer are Qwen2's: a saved run pairs this tokenizer with a `qwen2` config.json, and
transformers 5 then loads it as `Qwen2Tokenizer`, which rebuilds exactly this pipeline — so the saved model
tokenizes as in training.
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def demo_texts() -> list[str]:
    rows = json.loads((HERE / "demo" / "sparrow_sft.json").read_text())
    return [f"{row['instruction']} {row['output']}" for row in rows] + ["user", "assistant", "system"]


def main(vocab_size: int = 1024) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(demo_texts(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHATML, model_max_length=2048,
    )
    wrapped.save_pretrained(HERE / "sparrow-tokenizer")


if __name__ == "__main__":
    main()
