"""Build the quickstart's tokenizer (`assets/sparrow-tokenizer/`): a 1,024-entry byte-level BPE trained on the demo
data, with ChatML special tokens and chat template. Shipped prebuilt; rerun with `python -m lit_factory.assets.build_tokenizer`.

Byte-level BPE encodes any text (no unknown tokens), and a small vocabulary keeps the quickstart model tiny.
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
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
