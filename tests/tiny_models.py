"""What the tests share: the bundled tokenizer and demo data, and the tiny model shape they build from config."""

from pathlib import Path

SPARROW = "lit_factory/assets/sparrow-tokenizer"
DEMO = "lit_factory/assets/demo"
TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def save_tiny_base(directory: Path, seed: int = 1) -> Path:
    """A tiny random Qwen2-shaped model saved like a hub checkpoint, with the Sparrow tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SPARROW)
    options = dict(TINY, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
