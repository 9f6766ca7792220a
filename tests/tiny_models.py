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


# Large initial weights give a random model peaked next-token distributions, so greedy replies are not all one token.
PEAKED_TINY = dict(TINY, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.5)


def save_peaked_chat_model(directory: Path, seed: int = 0) -> Path:
    """A tiny random chat model (``PEAKED_TINY``) and the Sparrow tokenizer, saved for inference tests."""
    import torch

    from lit_factory.model import ModelArgs, build_inference_model, build_tokenizer

    torch.manual_seed(seed)
    args = ModelArgs(config=dict(PEAKED_TINY), tokenizer=SPARROW)
    tokenizer = build_tokenizer(args)
    build_inference_model(args, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def quiet_trainer(tmp_path, max_steps: int, **overrides):
    """A CPU float32 Lightning Trainer with no logger, checkpoints, progress bar or sanity check."""
    import lightning.pytorch as pl

    options = dict(max_steps=max_steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, num_sanity_val_steps=0)
    options.update(overrides)
    return pl.Trainer(**options)


def sparrow_data(tokenizer, **overrides):
    """The demo SFT set as a DataModule (chatml, 64 tokens, 4 a batch, in order); ``overrides`` change any argument."""
    from lit_factory.data.datamodule import DataModule

    options = dict(dataset="sparrow_sft", dataset_dir=DEMO, tokenizer=tokenizer, template="chatml",
                   cutoff_len=64, batch_size=4, shuffle=False)
    options.update(overrides)
    return DataModule(**options)
