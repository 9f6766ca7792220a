"""dataset_info.json entries and the alpaca/sharegpt aligners, including the errors users see."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lit_factory.data.align import align_alpaca, align_dataset, align_sharegpt
from lit_factory.data.datamodule import DataModule
from lit_factory.data.loader import load_dataset_file
from lit_factory.data.objectives import Supervised
from lit_factory.data.spec import get_dataset_spec, parse_entry
from lit_factory.errors import LitFactoryError


def write_data(folder: Path, entries: dict, files: dict[str, object]) -> Path:
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    for name, rows in files.items():
        (folder / name).write_text(rows if isinstance(rows, str) else json.dumps(rows))
    return folder


NO_EXTRAS = {"chosen": "", "rejected": "", "kto_tag": None, "images": [], "videos": [], "audios": []}


def spec_of(entry: dict, name: str = "x"):
    return parse_entry(name, entry, Path("/data/dataset_info.json"))


def test_alpaca_row_with_history_query_and_system():
    spec = spec_of({"file_name": "x.json", "columns": {"history": "history", "system": "system"}})
    row = {
        "instruction": "Translate", "input": "bonjour", "output": "hello", "system": "Be exact.",
        "history": [["hi", "hey"], ["how are you", "fine"]],
    }
    assert align_alpaca(row, spec) == {
        "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "Translate\nbonjour"}, {"role": "assistant", "content": "hello"},
        ],
        "system": "Be exact.",
        "tools": "",
        **NO_EXTRAS,
    }
    # An empty query leaves the prompt alone (no trailing newline), as in LLaMA-Factory.
    assert align_alpaca({"instruction": "Hi", "input": "", "output": "Hello"}, spec)["messages"][0]["content"] == "Hi"
    assert align_alpaca({"instruction": "Hi", "input": "", "output": ""}, spec) == "empty response"


def test_sharegpt_row_with_system_tag_and_tool_turns():
    spec = spec_of({"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                              "tools": "tools"}})
    row = {
        "conversations": [
            {"from": "system", "value": "Use tools."},
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "weather"}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "20 degrees."},
        ],
        "tools": '[{"name": "weather"}]',
    }
    assert align_sharegpt(row, spec) == {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "function", "content": '{"name": "weather"}'},
            {"role": "observation", "content": '{"temp": 20}'},
            {"role": "assistant", "content": "20 degrees."},
        ],
        "system": "Use tools.",
        "tools": '[{"name": "weather"}]',
        **NO_EXTRAS,
    }


def test_sharegpt_openai_style_tags():
    spec = spec_of({
        "file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    })
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert align_sharegpt(row, spec)["messages"] == row["messages"]


def test_malformed_rows_are_skipped_with_one_counted_warning(tmp_path, caplog):
    good = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows = [
        {"conversations": good},
        {"conversations": good[:1]},  # odd number of turns
        {"conversations": good[::-1]},  # roles out of order
        {"conversations": [good[0], {"from": "gpt", "value": " "}]},  # empty response
        {"conversations": good + good},
    ]
    folder = write_data(tmp_path, {"chat": {"file_name": "chat.json", "formatting": "sharegpt"}}, {"chat.json": rows})
    spec = get_dataset_spec("chat", folder)
    with caplog.at_level(logging.WARNING, logger="lit_factory.data.align"):
        aligned = align_dataset(load_dataset_file(spec), spec)
    assert len(aligned) == 2
    assert [len(row["messages"]) for row in aligned] == [2, 4]
    warnings = [r.getMessage() for r in caplog.records if r.name == "lit_factory.data.align"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"skipped 3 of 5 rows in {folder / 'chat.json'}: ")
    for reason in ("1 odd number of turns", "1 roles out of order", "1 empty response"):
        assert reason in warnings[0]


def test_file_formats_by_extension(tmp_path):
    entries = {
        "as_jsonl": {"file_name": "d.jsonl"},
        "as_csv": {"file_name": "d.csv"},
        "as_folder": {"file_name": "parts"},
        "as_text": {"file_name": "d.txt", "columns": {"prompt": "text"}},
    }
    (tmp_path / "parts").mkdir()
    files = {
        "d.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": "", "output": "d"}\n',
        "d.csv": "instruction,input,output\na,,b\nc,,d\n",
        "parts/1.json": [{"instruction": "a", "output": "b"}],
        "parts/2.json": [{"instruction": "c", "output": "d"}],
        "d.txt": "line one\nline two\n",
    }
    folder = write_data(tmp_path, entries, files)
    for name in ("as_jsonl", "as_csv", "as_folder"):
        spec = get_dataset_spec(name, folder)
        aligned = align_dataset(load_dataset_file(spec), spec)
        assert [row["messages"][1]["content"] for row in aligned] == ["b", "d"], name
    assert load_dataset_file(get_dataset_spec("as_text", folder))["text"] == ["line one", "line two"]


# ---- errors: one line naming the file, the field and the fix ----


def test_unknown_dataset_names_the_info_file_and_lists_names(peer_data_dir):
    with pytest.raises(LitFactoryError) as err:
        get_dataset_spec("alpaca_en_dmo", peer_data_dir)
    message = str(err.value)
    assert str(peer_data_dir / "dataset_info.json") in message
    assert "'alpaca_en_dmo'" in message and "alpaca_en_demo" in message
    assert "\n" not in message


def test_missing_dataset_info_names_the_path(tmp_path):
    with pytest.raises(LitFactoryError, match=f"{tmp_path / 'dataset_info.json'}: file not found"):
        DataModule("anything", dataset_dir=str(tmp_path), tokenizer="unused").setup("fit")


def test_missing_data_file_names_the_file(tmp_path, qwen_tokenizer):
    folder = write_data(tmp_path, {"gone": {"file_name": "gone.json"}}, {})
    module = DataModule("gone", dataset_dir=str(folder), tokenizer=qwen_tokenizer)
    with pytest.raises(LitFactoryError, match=f"{folder / 'gone.json'}: data file not found .*'gone'"):
        module.setup("fit")


def test_hub_entry_reads_subset_split_folder_and_fails_offline_in_one_line(peer_data_dir, tmp_path, monkeypatch):
    import datasets.config

    info = json.loads((peer_data_dir / "dataset_info.json").read_text())
    hub_name = next(name for name, entry in info.items() if "hf_hub_url" in entry and "file_name" not in entry)
    spec = get_dataset_spec(hub_name, peer_data_dir)
    assert spec.hub_id == info[hub_name]["hf_hub_url"]
    folder = write_data(tmp_path, {"remote": {"ms_hub_url": "someone/set", "subset": "en", "split": "test",
                                              "folder": "part1"}}, {})
    spec = get_dataset_spec("remote", folder)
    assert (spec.hub_id, spec.subset, spec.split, spec.folder) == ("someone/set", "en", "test", "part1")
    # No network here (and none in CI): the error names the entry and the fix instead of a library traceback.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    from lit_factory.data.loader import load_dataset_file

    with pytest.raises(LitFactoryError, match=r"entry 'remote': could not load Hub dataset 'someone/set' "
                                              r"\(subset='en', split='test'.*set file_name") as error:
        load_dataset_file(spec)
    assert "\n" not in str(error.value)
    with pytest.raises(LitFactoryError, match="loaded via om_hub_url; hub and script datasets are not supported"):
        spec_of({"om_hub_url": "x/y"})


def test_missing_column_names_the_file_and_columns(tmp_path):
    folder = write_data(
        tmp_path, {"d": {"file_name": "d.json", "columns": {"prompt": "question", "response": "answer"}}},
        {"d.json": [{"instruction": "a", "output": "b"}]},
    )
    spec = get_dataset_spec("d", folder)
    with pytest.raises(LitFactoryError, match=r"d\.json: column\(s\) \['answer', 'question'\] not found"):
        align_dataset(load_dataset_file(spec), spec)


def test_invalid_entries(tmp_path):
    with pytest.raises(LitFactoryError, match="formatting 'chatml' is unknown"):
        spec_of({"file_name": "x.json", "formatting": "chatml"})
    with pytest.raises(LitFactoryError, match="columns.answer is unknown"):
        spec_of({"file_name": "x.json", "columns": {"answer": "output"}})
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(LitFactoryError, match="dataset_info.json: not valid JSON"):
        get_dataset_spec("x", tmp_path)
    preference = spec_of({"file_name": "x.json", "ranking": True, "formatting": "sharegpt"}, name="prefs")
    with pytest.raises(LitFactoryError, match="'prefs' is a preference"):
        Supervised().check(preference)


def test_unloadable_tokenizer_names_the_field(tmp_path):
    missing = tmp_path / "no-tokenizer-here"
    with pytest.raises(LitFactoryError, match=f"data.tokenizer='{missing}': could not load a tokenizer"):
        DataModule("identity", tokenizer=str(missing)).tokenizer


def test_invalid_json_line_names_file_line_and_entry(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl"}}))
    with pytest.raises(LitFactoryError, match=r"d\.jsonl: could not be read as json \(line 2: Expecting value; "
                                              r"entry 'd'\)\. Fix:"):
        load_dataset_file(get_dataset_spec("d", tmp_path))


def test_openai_tool_calls_keep_the_assistant_text_and_each_result():
    spec = spec_of({"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "messages"}})
    add = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    row = {"messages": [
        {"role": "user", "content": "1+1, twice?"},
        {"role": "assistant", "content": "Two calls.", "tool_calls": [add, add]},
        {"role": "tool", "content": "2"}, {"role": "tool", "content": "2."},
        {"role": "assistant", "content": "2 both times."},
    ]}
    messages = align_sharegpt(row, spec)["messages"]
    assert [m["role"] for m in messages] == ["user", "function", "observation", "assistant"]
    assert json.loads(messages[1]["content"]) == {
        "content": "Two calls.", "tool_calls": [{"name": "add", "arguments": {"a": 1}}] * 2}
    assert json.loads(messages[2]["content"]) == {"tool_results": ["2", "2."]}
    # Without text, calls are written as LLaMA-Factory writes them: one object, or a list.
    row["messages"][1] = {"role": "assistant", "content": None, "tool_calls": [add]}
    assert json.loads(align_sharegpt(row, spec)["messages"][1]["content"]) == {"name": "add", "arguments": {"a": 1}}


def test_empty_system_message_is_kept_and_empty_system_column_means_the_default(tmp_path, qwen_tokenizer):
    """A system message is used as written, even empty (as apply_chat_template renders it); an empty system column
    means none, so the template's default applies (as in LLaMA-Factory)."""
    dialogue = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    folder = write_data(tmp_path, {
        "openai": {"file_name": "openai.json", "formatting": "sharegpt", "columns": {"messages": "messages"}},
        "tagged": {"file_name": "tagged.json", "formatting": "sharegpt"},
        "alpaca": {"file_name": "alpaca.json", "columns": {"system": "system"}},
    }, {
        "openai.json": [{"messages": [{"role": "system", "content": ""}, *dialogue]}],
        "tagged.json": [{"conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "Hi"},
                                           {"from": "gpt", "value": "Hello!"}]}],
        "alpaca.json": [{"instruction": "Hi", "output": "Hello!", "system": ""}],
    })

    def ids(name):
        module = DataModule(name, dataset_dir=str(folder), tokenizer=qwen_tokenizer, template="qwen", shuffle=False)
        module.setup("fit")
        return module.train_set[0]["input_ids"]

    def reference(messages):
        out = qwen_tokenizer.apply_chat_template(messages, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    empty_system = reference([{"role": "system", "content": ""}, *dialogue])
    assert ids("openai") == ids("tagged") == empty_system
    assert ids("alpaca") == reference(dialogue) != empty_system
