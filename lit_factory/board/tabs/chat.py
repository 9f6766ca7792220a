"""The Chat tab: load a base model (+ adapter), or a run's output, and chat with it, the reply streamed.

Generation goes through ``lit_factory.infer.engine.ChatEngine`` — the same template and stop words as
``lit-factory chat`` and ``serve``.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from lit_factory.board import recipe as recipes
from lit_factory.board.handlers import MODEL_INPUT_CHECKS, guarded, local_folder, local_path, run_output
from lit_factory.board.locales import text
from lit_factory.board.runs import RunManager
from lit_factory.errors import LitFactoryError


def stream_reply(engine: Any, history: list[dict[str, Any]], user_text: str, system: str = "",
                 **generation: Any) -> Iterator[list[dict[str, Any]]]:
    """Append ``user_text`` and a growing assistant reply to ``history``; yield the history after each piece the
    engine streams (``generation`` overrides its decoding settings: max_new_tokens, temperature, top_p...)."""
    history = [*history, {"role": "user", "content": user_text}, {"role": "assistant", "content": ""}]
    messages = [{"role": turn["role"], "content": _content(turn["content"])} for turn in history[:-1]]
    pieces = 0
    for piece in engine.stream(messages, system or None, **generation):
        history[-1] = {"role": "assistant", "content": history[-1]["content"] + piece}
        pieces += 1
        yield list(history)
    if pieces == 0:  # the model ended its turn at once: the page still shows the (empty) reply
        yield list(history)


def build_chat_tab(ui: Any, manager: RunManager, lang: Any) -> None:
    """Add the Chat tab's components and handlers to the open ``gr.Blocks`` (inside its ``gr.Tab``)."""
    import gradio as gr

    word = ui.word
    loaded: dict[str, Any] = {}  # the one model this board keeps in memory: {"engine", "label"}

    with gr.Row():
        run_pick = ui("chat_run", gr.Dropdown([], label=word("chat_run"), elem_id="chat_run", scale=2,
                                              allow_custom_value=True))  # run names; use_run checks them
        refresh = ui("chat_refresh", gr.Button(word("chat_refresh"), scale=0), "value")
    with gr.Row():
        model_path = ui("chat_model", gr.Textbox(label=word("chat_model"), elem_id="chat_model", scale=2))
        adapter = ui("chat_adapter", gr.Textbox(label=word("chat_adapter"), elem_id="chat_adapter", scale=2))
        tokenizer = ui("tokenizer", gr.Textbox(label=word("tokenizer"), elem_id="chat_tokenizer"))
        template = ui("template", gr.Dropdown(recipes.available_templates(), value="auto", allow_custom_value=True,
                                              label=word("template"), elem_id="chat_template"))
    with gr.Row():
        load_button = ui("chat_load", gr.Button(word("chat_load"), variant="primary", elem_id="chat_load"), "value")
        unload_button = ui("chat_unload", gr.Button(word("chat_unload")), "value")
    status = gr.Markdown(elem_id="chat_status")
    system = ui("chat_system", gr.Textbox(label=word("chat_system"), lines=2, elem_id="chat_system"))
    with gr.Row():
        max_new_tokens = ui("chat_max_new_tokens", gr.Slider(1, 2048, value=256, step=1,
                                                             label=word("chat_max_new_tokens")))
        temperature = ui("chat_temperature", gr.Slider(0, 2, value=0.95, step=0.01, label=word("chat_temperature")))
        top_p = ui("chat_top_p", gr.Slider(0.01, 1, value=0.7, step=0.01, label=word("chat_top_p")))
    chatbot = ui("chat_history", gr.Chatbot(label=word("chat_history"), elem_id="chat_history", height=360))
    with gr.Row():
        message = ui("chat_message", gr.Textbox(label=word("chat_message"), elem_id="chat_message", scale=4))
        send = ui("chat_send", gr.Button(word("chat_send"), variant="primary", scale=0), "value")
        clear = ui("chat_clear", gr.Button(word("chat_clear"), scale=0), "value")

    @guarded(outputs=4, status_at=-1)
    def use_run(name: str, lang_code: str) -> tuple:
        path, adapter_dir, tokenizer_dir = run_output(manager, name)
        return path, adapter_dir, tokenizer_dir, ""

    @guarded(outputs=1, status_at=0)
    def load(path: str, adapter_dir: str, tokenizer_dir: str, template_name: str, lang_code: str) -> str:
        from lit_factory.infer.engine import ChatEngine
        from lit_factory.model.builder import ModelArgs

        if not (path or "").strip():
            raise LitFactoryError("model path: empty. Fix: give a model folder or hub id, or pick a run.")
        args = ModelArgs(path=local_path(manager, path), adapter=local_folder(manager, adapter_dir) or None,
                         tokenizer=local_path(manager, tokenizer_dir, "tokenizer") or None)
        loaded.clear()
        loaded["engine"] = ChatEngine.load(args, template_name or "auto", device="auto")
        loaded["label"] = path + (f" + {adapter_dir}" if adapter_dir else "")
        return text(lang_code, "msg_chat_loaded", model=loaded["label"])

    def unload(lang_code: str) -> str:
        loaded.clear()
        return text(lang_code, "msg_chat_unloaded")

    def respond(user_text: str, history: list, system_prompt: str, new_tokens: float, temp: float, p: float,
                lang_code: str) -> Iterator[tuple]:
        history = list(history or [])
        if "engine" not in loaded:
            yield history, user_text, text(lang_code, "msg_error", message=text(lang_code, "msg_chat_no_model"))
            return
        if not (user_text or "").strip():
            yield history, "", ""
            return
        try:
            for updated in stream_reply(loaded["engine"], history, user_text, system_prompt,
                                        max_new_tokens=int(new_tokens), temperature=float(temp), top_p=float(p)):
                yield updated, "", ""
        except Exception as err:  # shown in the page; the server keeps serving
            message = " ".join(str(err).split()) if isinstance(err, LitFactoryError) else f"{type(err).__name__}: {err}"
            yield history, user_text, text(lang_code, "msg_error", message=message)

    refresh.click(lambda: gr.update(choices=manager.discover()), None, run_pick, api_name=False)
    run_pick.focus(lambda: gr.update(choices=manager.discover()), None, run_pick, api_name=False)
    run_pick.change(use_run, [run_pick, lang], [model_path, adapter, tokenizer, status], api_name="chat_use_run")
    load_button.click(load, [model_path, adapter, tokenizer, template, lang], status, api_name="chat_load",
                      validator=manager.workspace.validator(
                          [(position, word(key), kind) for position, (key, kind) in enumerate(MODEL_INPUT_CHECKS)]))
    unload_button.click(unload, lang, status, api_name="chat_unload")
    chat_inputs = [message, chatbot, system, max_new_tokens, temperature, top_p, lang]
    send.click(respond, chat_inputs, [chatbot, message, status], api_name="chat")
    message.submit(respond, chat_inputs, [chatbot, message, status], api_name=False)
    clear.click(lambda: ([], ""), None, [chatbot, status], api_name=False)


def _content(value: Any) -> str:
    """Chatbot messages may come back as a list of parts; the model takes their text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_content(part) for part in value)
    if isinstance(value, dict):
        return str(value.get("text") or value.get("content") or "")
    return json.dumps(value) if value is not None else ""

