"""Where a run's outputs go (never among or over a user's files), and LoRA with new tokens on a model with tied
embeddings: one embedding/head copy trains, and the saved adapter reloads tied in plain PEFT with equal logits."""

import json
import logging
from functools import partial
from pathlib import Path

import pytest
import torch

from lit_factory.data.datamodule import DataModule
from lit_factory.errors import LitFactoryError
from lit_factory.model import LoRA, ModelArgs
from lit_factory.stages import SFT
from tiny_models import DEMO, SPARROW, TINY, quiet_trainer, save_tiny_base

DEMO_DIR = str(Path(__file__).resolve().parents[1] / DEMO)  # one test changes the current directory


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def sparrow_data(tokenizer) -> DataModule:
    return DataModule(dataset="sparrow_sft", dataset_dir=DEMO_DIR, tokenizer=tokenizer, template="chatml",
                      cutoff_len=64, batch_size=4, shuffle=False)


def lora_sft(base_dir, **model_options) -> SFT:
    return SFT(ModelArgs(path=str(base_dir), **model_options), LoRA(r=4), partial(torch.optim.AdamW, lr=1e-2))


def test_a_run_without_logger_leaves_the_current_directory_alone(base_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("my notes\n")
    stage = lora_sft(base_dir)
    with caplog.at_level(logging.INFO):
        # default_root_dir unset: Lightning's default is the current directory, which Trainer.log_dir returns.
        quiet_trainer(None, 1, default_root_dir=None).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    assert (tmp_path / "README.md").read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "runs"]
    run = tmp_path / "runs" / "version_0"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in run.iterdir()}
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert f"to {Path('runs') / 'version_0'}" in messages or str(run) in messages
    assert "holds files lit-factory did not write (README.md)" in messages

    # A second run gets its own folder.
    stage = lora_sft(base_dir)
    quiet_trainer(None, 1, default_root_dir=None).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    assert (tmp_path / "runs" / "version_1" / "adapter_config.json").is_file()


def test_a_root_dir_with_foreign_files_gets_a_run_folder_and_an_own_one_is_reused(base_dir, tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text("my notes\n")
    stage = lora_sft(base_dir)
    with caplog.at_level(logging.INFO):
        quiet_trainer(root, 1).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    assert (root / "README.md").read_text() == "my notes\n"
    assert (root / "runs" / "version_0" / "adapter_model.safetensors").is_file()
    assert "holds files lit-factory did not write (README.md)" in caplog.text

    # An empty root dir is the run's folder; training again into it replaces only what the first save wrote.
    own = tmp_path / "own"
    quiet_trainer(own, 1).fit(stage := lora_sft(base_dir), datamodule=sparrow_data(stage.tokenizer))
    first = (own / "adapter_model.safetensors").read_bytes()
    quiet_trainer(own, 2).fit(stage := lora_sft(base_dir), datamodule=sparrow_data(stage.tokenizer))
    assert (own / "adapter_model.safetensors").read_bytes() != first
    assert not (own / "runs").exists()
    assert "README.md" in json.loads((own / ".lit-factory-outputs.json").read_text())


def test_save_pretrained_refuses_to_replace_a_file_it_did_not_write(base_dir, tmp_path):
    stage = lora_sft(base_dir)
    stage.configure_model()
    (tmp_path / "README.md").write_text("my notes\n")
    with pytest.raises(LitFactoryError, match=r"already holds README\.md, which lit-factory did not write"):
        stage.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "my notes\n"


@pytest.fixture(scope="module")
def tied_base_dir(tmp_path_factory) -> Path:
    """The tiny base with ``tie_word_embeddings: true`` (as Qwen2.5-0.5B/1.5B and many small models ship)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tied-base")
    tokenizer = AutoTokenizer.from_pretrained(SPARROW)
    options = dict(TINY, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(options.pop("model_type"), **options))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lora_with_new_tokens_keeps_tied_embeddings_tied_and_reloads_tied(tied_base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = lora_sft(tied_base_dir, new_special_tokens=["<tool>", "</tool>"])
    quiet_trainer(tmp_path, 3).fit(stage, datamodule=sparrow_data(stage.tokenizer))
    embeddings, head = stage.model.get_input_embeddings(), stage.model.get_output_embeddings()
    assert embeddings.weight is head.weight  # one trainable copy, not two that drift apart
    original = AutoModelForCausalLM.from_pretrained(tied_base_dir).get_input_embeddings().weight
    assert not torch.equal(embeddings.weight[: original.size(0)], original)  # and it did train

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tied_base_dir)
    base.resize_token_embeddings(len(tokenizer))
    reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
    assert torch.equal(reloaded.get_input_embeddings().weight, reloaded.get_output_embeddings().weight)
    ids = tokenizer("<tool> What is the capital of Peru? </tool> Lima.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, stage.model.eval()(**ids).logits, rtol=0, atol=1e-5)


def test_an_empty_current_directory_is_not_an_output_folder(tmp_path, monkeypatch):
    from lit_factory.stages.run_folder import choose_output_folder

    monkeypatch.chdir(tmp_path)
    chosen, reason = choose_output_folder(tmp_path)
    assert chosen == tmp_path / "runs" / "version_0" and reason == f"{tmp_path} is the current directory"
    assert choose_output_folder(tmp_path / "elsewhere") == (tmp_path / "elsewhere", None)
