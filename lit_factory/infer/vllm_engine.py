"""The vLLM backend of ``lit-factory serve --backend vllm`` (optional: needs the vllm package and a GPU).

Same interface as :class:`ChatEngine` (prompts rendered by our template, stop words from it), with vLLM's offline
``LLM`` doing the generation and a LoRA adapter applied through ``LoRARequest``. The offline engine has no token
stream, so ``stream`` delivers the reply as one piece when it is complete, and a request waits for the one before it to
finish (no token-step turns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from lit_factory.errors import LitFactoryError
from lit_factory.infer.engine import ChatEngine, GenerationArgs, Reply, StreamedReply

if TYPE_CHECKING:
    from lit_factory.model.builder import ModelArgs


class VLLMEngine(ChatEngine):
    """A chat engine over ``vllm.LLM``.

    Args:
        model_args: ``path`` is loaded by vLLM; ``adapter`` (a PEFT LoRA folder) is applied per request.
        template: chat template name or path (``auto`` picks it from the tokenizer).
        generation: default decoding settings.
    """

    def __init__(self, model_args: "ModelArgs", template: str = "auto", generation: Optional[GenerationArgs] = None):
        try:
            from vllm import LLM
        except ImportError:
            raise LitFactoryError("--backend vllm: the vllm package is not installed. Fix: pip install vllm "
                                  "(needs a CUDA GPU), or use --backend transformers.") from None
        from lit_factory.data.templates import get_template
        from lit_factory.model.builder import build_tokenizer

        if model_args.path is None:
            raise LitFactoryError("--backend vllm loads a saved model: give --model a folder or hub id")
        tokenizer = build_tokenizer(model_args)
        llm = LLM(
            model=model_args.path, tokenizer=model_args.tokenizer_path, dtype=model_args.dtype,
            trust_remote_code=model_args.trust_remote_code, enable_lora=model_args.adapter is not None,
        )
        super().__init__(llm, tokenizer, get_template(template, tokenizer), generation or GenerationArgs())
        self.lora_request = None
        if model_args.adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, model_args.adapter)

    def complete_ids(
        self, prompt_ids: list[int], stop_words: tuple[str, ...] = (), json_schema: Optional[dict[str, Any]] = None,
        **overrides: Any,
    ) -> Reply:
        from vllm import SamplingParams

        if json_schema is not None:
            raise LitFactoryError("response_format: JSON output is enforced by the transformers backend only. Fix: "
                                  "serve with --backend transformers, or send response_format {\"type\": \"text\"}.")
        generation = self.generation.updated(**overrides)
        params = SamplingParams(
            temperature=generation.temperature, top_p=generation.top_p, top_k=generation.top_k or -1,
            max_tokens=generation.max_new_tokens, repetition_penalty=generation.repetition_penalty,
            stop=list(stop_words),
        )
        # The offline LLM runs one generate() call to its end: requests take whole turns here, not token steps.
        with self.turns.turn():
            output = self.model.generate(
                [{"prompt_token_ids": prompt_ids}], params, lora_request=self.lora_request, use_tqdm=False
            )[0].outputs[0]
        finish = "length" if output.finish_reason == "length" else "stop"
        return Reply(output.text, len(prompt_ids), len(output.token_ids), finish)

    def stream_ids(
        self, prompt_ids: list[int], stop_words: tuple[str, ...] = (), json_schema: Optional[dict[str, Any]] = None,
        **overrides: Any,
    ) -> StreamedReply:
        streamed = StreamedReply(iter(()), len(prompt_ids))

        def pieces() -> Any:
            reply = self.complete_ids(prompt_ids, stop_words, json_schema, **overrides)
            streamed.completion_tokens, streamed.finish_reason = reply.completion_tokens, reply.finish_reason
            yield reply.text

        streamed._pieces = pieces()
        return streamed
