"""The generation engine shared by chat, predict and serve: prompts, stop words, streaming, batching, checked
against transformers' own ``apply_chat_template`` and plain ``model.generate`` calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_factory.data.templates import get_template
from lit_factory.errors import LitFactoryError
from lit_factory.infer.engine import ChatEngine, GenerationArgs, cut_at_stop_words, generate_batch, stop_token_ids
from lit_factory.model.builder import ModelArgs

SPARROW = str(Path(__file__).resolve().parents[2] / "lit_factory" / "assets" / "sparrow-tokenizer")
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "initializer_range": 0.5}  # a wide init so greedy replies vary
GREEDY = GenerationArgs(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def engine() -> ChatEngine:
    torch.manual_seed(0)
    return ChatEngine.load(ModelArgs(config=TINY, tokenizer=SPARROW), "chatml", GREEDY, device="cpu")


MESSAGES = [{"role": "user", "content": "Who are you?"}]


def plain_generate(engine: ChatEngine, messages: list[dict[str, str]], **kwargs) -> list[int]:
    """Reference: the tokenizer's own chat template and model.generate, no lit-factory code."""
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]
    im_end = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = engine.tokenizer.convert_tokens_to_ids("<|im_start|>")
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                eos_token_id=[im_end, im_start], pad_token_id=engine.tokenizer.pad_token_id,
                                **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_prompt_matches_the_tokenizers_chat_template(engine: ChatEngine) -> None:
    history = [*MESSAGES, {"role": "assistant", "content": "Sparrow."}, {"role": "user", "content": "Where?"}]
    for messages in (MESSAGES, history):
        expected = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]
        assert engine.encode(messages) == list(expected)


def test_greedy_reply_equals_plain_generate(engine: ChatEngine) -> None:
    reference = plain_generate(engine, MESSAGES, max_new_tokens=12)
    reply = engine.chat(MESSAGES)
    assert reply.text == engine.tokenizer.decode(reference, skip_special_tokens=True)
    assert reply.completion_tokens == len(reference)
    assert reply.prompt_tokens == len(engine.encode(MESSAGES))
    assert reply.finish_reason == ("stop" if len(reference) < 12 else "length")
    assert engine.chat(MESSAGES, max_new_tokens=3).completion_tokens == 3  # per-call override


def test_stream_yields_pieces_that_add_up_to_the_reply(engine: ChatEngine) -> None:
    reply = engine.chat(MESSAGES)
    streamed = engine.stream(MESSAGES)
    pieces = list(streamed)
    assert len(pieces) > 1
    assert "".join(pieces) == reply.text == streamed.text
    assert (streamed.completion_tokens, streamed.finish_reason) == (reply.completion_tokens, reply.finish_reason)


def test_multi_token_stop_word_cuts_chat_and_stream(engine: ChatEngine) -> None:
    full = engine.chat(MESSAGES, max_new_tokens=24).text
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    assert len(engine.tokenizer.encode(stop, add_special_tokens=False)) > 1 and full.find(stop) > 0
    expected = full[: full.find(stop)]
    cut = engine.chat(MESSAGES, stop=(stop,), max_new_tokens=24)
    assert cut.text == expected and cut.finish_reason == "stop"
    streamed = engine.stream(MESSAGES, stop=(stop,), max_new_tokens=24)
    assert "".join(streamed) == expected and streamed.finish_reason == "stop"


def test_left_padded_batch_equals_one_prompt_at_a_time(engine: ChatEngine) -> None:
    conversations = [MESSAGES, [{"role": "user", "content": "Tell me a much longer question, please, now."}]]
    prompts = [engine.encode(m) for m in conversations]
    width = max(map(len, prompts))
    pad = engine.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = generate_batch(engine.model, engine.tokenizer, input_ids, mask, GREEDY, engine.stop_words)
    assert [r.text for r in batched] == [engine.chat(m).text for m in conversations]
    assert [r.prompt_tokens for r in batched] == [len(p) for p in prompts]


def test_sampling_settings_reach_generate(qwen_tokenizer) -> None:
    sampling = GenerationArgs(temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1, max_new_tokens=5)
    kwargs = sampling.generate_kwargs(qwen_tokenizer, ("<|im_end|>", "Observation:"))
    assert kwargs["do_sample"] and (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]) == (0.7, 0.9, 20)
    assert kwargs["repetition_penalty"] == 1.1 and kwargs["max_new_tokens"] == 5
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in kwargs["eos_token_id"] and kwargs["stop_strings"] == ["Observation:"]
    assert GenerationArgs(temperature=0).generate_kwargs(qwen_tokenizer)["do_sample"] is False


def test_sampling_is_seeded_and_differs_from_greedy(engine: ChatEngine) -> None:
    torch.manual_seed(1)
    first = engine.chat(MESSAGES, temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=12).text
    torch.manual_seed(1)
    assert engine.chat(MESSAGES, temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=12).text == first
    assert first != engine.chat(MESSAGES).text


def test_bad_settings_and_stop_words() -> None:
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"repetition_penalty": 0}):
        with pytest.raises(LitFactoryError, match="out of range"):
            GenerationArgs(**bad)
    assert cut_at_stop_words("abc<x>def<y>", ("<y>", "<x>")) == "abc"
    assert cut_at_stop_words("abc", ()) == "abc"


def test_template_stop_words_become_eos_ids(qwen_tokenizer) -> None:
    eos_ids, strings = stop_token_ids(qwen_tokenizer, get_template("qwen").stop_words)
    assert set(eos_ids) == {qwen_tokenizer.eos_token_id, qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert strings == []
