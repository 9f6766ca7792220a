"""The bad-input matrix: every case is a `lit-factory` command that must fail with one line naming the file or key
and the fix, exit status 2, no traceback, nothing on disk lost and no `version_N` folder left behind.

Each case runs in its own process: one driver subprocess imports lit-factory's heavy dependencies once and forks a
child per case that calls the CLI entry (`lit_factory.cli.main`) with the case's arguments, so sixty cases cost one
import instead of sixty. Checkpoint cases share one tiny trained checkpoint (module fixture)."""

from __future__ import annotations

import hashlib
import importlib.util
import http.server
import json
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tiny_models import save_tiny_base

QUICKSTART = "recipes/quickstart.yaml"
TINY_CONFIG = json.dumps(dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                              tie_word_embeddings=True))
OTHER_SHAPE = json.dumps({**json.loads(TINY_CONFIG), "hidden_size": 64, "intermediate_size": 128})

# A logger class whose tracking package is not installed here: (class name, the package it names).
ABSENT_LOGGER = next(((cls, package) for cls, module, package in (
    ("WandbLogger", "wandb", "wandb"), ("CometLogger", "comet_ml", "comet-ml"), ("NeptuneLogger", "neptune", "neptune"),
    ("MLFlowLogger", "mlflow", "mlflow")) if importlib.util.find_spec(module) is None), None)

# Runs each case in a forked child of one process that has imported the heavy libraries already.
DRIVER = r"""
import json, os, sys
import torch, lightning.pytorch, transformers, datasets, jsonargparse  # noqa: F401  imported once, shared by forks
from lit_factory.cli import main
cases, out = json.load(open(sys.argv[1])), sys.argv[2]
results = {}
for case_id, argv in cases.items():
    log = os.path.join(out, case_id + ".log")
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1); os.dup2(fd, 2)
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc(); code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    _, status = os.waitpid(pid, 0)
    results[case_id] = os.waitstatus_to_exitcode(status)
json.dump(results, open(os.path.join(out, "results.json"), "w"))
"""


class Evil:
    """A pickle that, if ever unpickled with code execution allowed, creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {}, "payload": Evil(marker)}, path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_cases(root: Path, ckpt: Path, evil_url: str, base: Path, taken_port: int) -> dict[str, tuple[list[str], str]]:
    """case id -> (argv, text the one error line must contain)."""
    data = root / "data"
    data.mkdir()
    info = {
        "empty": {"file_name": "empty.json"}, "badutf": {"file_name": "bad.json"},
        "robot": {"file_name": "robot.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "image": {"file_name": "image.json", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "images": "images"}},
        "missing_file": {"file_name": "absent.json"}, "odd_ext": {"file_name": "rows.xyz"},
        "broken_json": {"file_name": "broken.jsonl"}, "bad_column": {"file_name": "ok.json",
                                                                    "columns": {"prompt": "no_such_column"}},
        "bad_formatting": {"file_name": "ok.json", "formatting": "markdown"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    (data / "empty.json").write_text("[]")
    (data / "bad.json").write_bytes(b'[{"instruction": "hi \xff\xfe", "output": "x"}]')
    turn = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    (data / "robot.json").write_text(json.dumps([{"conversations": [{"from": "robot", "value": "hi"}, turn[1]]}]))
    (data / "image.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "<image>hi"}, turn[1]],
                                                  "images": ["no_such_image.png"]}]))
    (data / "rows.xyz").write_text("rows")
    (data / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    (data / "ok.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    bad_info = root / "bad_info"
    bad_info.mkdir()
    (bad_info / "dataset_info.json").write_text('{"a": ')
    recipes = {
        "syntax.yaml": "trainer:\n  max_steps: [1\n", "empty.yaml": "", "comments.yaml": "# nothing here\n",
        "list.yaml": "- trainer\n- model\n", "scalar.yaml": "fit\n", "tabs.yaml": "trainer:\n\tmax_steps: 1\n",
        "unknown_key.yaml": "trainer:\n  max_stepz: 3\n",
    }
    for name, text in recipes.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("# caf\xe9\ntrainer: {}\n".encode("latin-1"))
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (root / "random.ckpt").write_bytes(bytes(range(256)) * 40)
    (root / "empty.ckpt").write_bytes(b"")
    (root / "text.ckpt").write_text("trainer: {}\n")
    write_evil_checkpoint(root / "evil.ckpt", root / "PWNED")
    taken_output = root / "taken_output"
    taken_output.mkdir()
    (taken_output / "keep.txt").write_text("precious")
    runs = str(root / "runs")

    def fit(*extra: str) -> list[str]:
        return ["fit", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", runs,
                "--trainer.max_steps", "2", "--model.init_args.model.config", TINY_CONFIG, *extra]

    def fit_data(dataset: str, *extra: str) -> list[str]:
        return fit("--data.init_args.dataset_dir", str(data), "--data.init_args.dataset", f"[{dataset}]",
                   "--data.init_args.val_size", "0", *extra)

    m = str(base)
    return {
        # Recipe files: answered before anything heavy is imported.
        "unknown_subcommand": (["finetune"], "unknown subcommand 'finetune'"),
        "missing_recipe": (["fit", "--config", str(root / "nope.yaml")], "nope.yaml"),
        "yaml_syntax": (["fit", "--config", str(root / "syntax.yaml")], "syntax.yaml: YAML syntax error at line"),
        "yaml_tabs": (["fit", "--config", str(root / "tabs.yaml")], "tabs.yaml: YAML syntax error"),
        "empty_recipe": (["fit", "--config", str(root / "empty.yaml")], "empty.yaml: the recipe is empty"),
        "comment_only_recipe": (["fit", "--config", str(root / "comments.yaml")], "the recipe is empty"),
        "list_recipe": (["fit", "--config", str(root / "list.yaml")], "list.yaml: a recipe is a mapping"),
        "scalar_recipe": (["fit", "--config", str(root / "scalar.yaml")], "scalar.yaml: a recipe is a mapping"),
        "latin1_recipe": (["fit", "--config", str(root / "latin1.yaml")], "latin1.yaml: not UTF-8"),
        "validate_missing_recipe": (["validate", "--config", str(root / "nope.yaml")], "nope.yaml"),
        # jsonargparse: one line with the key, the accepted values and the fix.
        "unknown_key": (fit("--trainer.max_stepz", "5"), "--trainer.max_stepz: no such option"),
        "unknown_key_in_recipe": (["fit", "--config", QUICKSTART, "--config", str(root / "unknown_key.yaml")],
                                  "max_stepz"),
        "unknown_top_level_key": (fit("--colour", "blue"), "--colour: no such option"),
        "max_steps_not_int": (fit("--trainer.max_steps", "five"), "trainer.max_steps: five is not of type int"),
        "precision": (fit("--trainer.precision", "33"), "trainer.precision: 33 is not accepted. Fix: use one of"),
        "precision_typo": (fit("--trainer.precision", "bf16-mix"), "'bf16-mixed'"),
        "lr_schedule": (fit("--model.init_args.lr_schedule", "cosinus"),
                        "lr_schedule: cosinus is not accepted. Fix: use one of 'cosine', 'linear', 'constant'"),
        "warmup_not_number": (fit("--model.init_args.warmup_steps", "x"), "warmup_steps: x is not of type float"),
        "batch_size_not_int": (fit("--data.init_args.batch_size", "many"), "batch_size"),
        "cutoff_not_int": (fit("--data.init_args.cutoff_len", "long"), "cutoff_len"),
        "bad_stage_class": (fit("--model.class_path", "lit_factory.stages.Nope"),
                            "model: class_path 'lit_factory.stages.Nope' cannot be imported"),
        "bad_method_class": (fit("--model.init_args.finetuning.class_path", "lit_factory.model.Nope"),
                             "finetuning: class_path 'lit_factory.model.Nope' cannot be imported"),
        "bad_data_class": (fit("--data.class_path", "lit_factory.data.Nope"), "class_path 'lit_factory.data.Nope'"),
        "bad_module_class": (fit("--model.init_args.finetuning.class_path", "no_such_package.LoRA"),
                             "no_such_package.LoRA"),
        "option_of_another_method": (fit("--model.init_args.finetuning.init_args.rank", "8"), "rank"),
        "seed_not_int": (fit("--seed_everything", "abc"), "seed_everything"),
        # Values checked before Lightning or torch would raise deep inside.
        "negative_max_steps": (fit("--trainer.max_steps", "-3"), "trainer.max_steps: -3 is negative"),
        "negative_max_epochs": (fit("--trainer.max_epochs", "-5"), "trainer.max_epochs: -5 is negative"),
        "negative_lr": (fit("--model.init_args.optimizer.init_args.lr", "-1"), "lr: -1.0 is negative"),
        "unknown_accelerator": (fit("--trainer.accelerator", "tpu9"), "trainer: You selected an invalid accelerator"),
        # Checkpoints: never unpickled with code execution, never fetched from the network.
        "ckpt_http": (fit("--ckpt_path", evil_url), "remote checkpoints are refused"),
        "ckpt_https": (fit("--ckpt_path", "https://example.invalid/x.ckpt"), "remote checkpoints are refused"),
        "ckpt_s3": (fit("--ckpt_path", "s3://bucket/x.ckpt"), "remote checkpoints are refused"),
        "ckpt_missing": (fit("--ckpt_path", str(root / "absent.ckpt")), "absent.ckpt: no such checkpoint file"),
        "ckpt_folder": (fit("--ckpt_path", str(root)), "no such checkpoint file"),
        "ckpt_random_bytes": (fit("--ckpt_path", str(root / "random.ckpt")), "random.ckpt: cannot resume from it"),
        "ckpt_truncated": (fit("--ckpt_path", str(truncated)), "truncated.ckpt: cannot resume from it"),
        "ckpt_empty": (fit("--ckpt_path", str(root / "empty.ckpt")), "empty.ckpt: cannot resume from it"),
        "ckpt_yaml": (fit("--ckpt_path", str(root / "text.ckpt")), "text.ckpt: cannot resume from it"),
        "ckpt_malicious_local": (fit("--ckpt_path", str(root / "evil.ckpt")), "evil.ckpt: cannot resume from it"),
        "ckpt_other_shape": (["fit", "--config", QUICKSTART, "--trainer.logger.init_args.save_dir", runs,
                              "--trainer.max_steps", "4", "--model.init_args.model.config", OTHER_SHAPE,
                              "--ckpt_path", str(ckpt)], "cannot resume from it"),
        "ckpt_other_method": (fit("--trainer.max_steps", "4", "--model.init_args.finetuning.class_path",
                                  "lit_factory.model.LoRA", "--ckpt_path", str(ckpt)), "cannot resume from it"),
        # Models and tokenizers.
        "model_path_missing": (["fit", "--config", "recipes/sft/lora.yaml", "--trainer.logger.init_args.save_dir",
                                runs, "--model.init_args.model.path", str(root / "no_model")], "no_model"),
        "model_path_and_config": (fit("--model.init_args.model.path", str(root / "no_model")), "set exactly one"),
        "tokenizer_missing": (fit("--model.init_args.model.tokenizer", str(root / "no_tokenizer")), "no_tokenizer"),
        # Data.
        "dataset_unknown": (fit("--data.init_args.dataset", "[no_such_set]"), "no_such_set"),
        "dataset_dir_missing": (fit("--data.init_args.dataset_dir", str(root / "no_dir")), "no_dir"),
        "dataset_info_syntax": (fit("--data.init_args.dataset_dir", str(bad_info)), "dataset_info.json"),
        "dataset_empty_list": (fit_data("empty"), "empty.json: holds no rows"),
        "dataset_not_utf8": (fit_data("badutf"), "bad.json: not UTF-8 text"),
        "dataset_unknown_role": (fit_data("robot"), "data.dataset=robot"),
        "dataset_missing_image": (fit_data("image"), "data.dataset=image"),
        "dataset_missing_file": (fit_data("missing_file"), "absent.json: data file not found"),
        "dataset_odd_extension": (fit_data("odd_ext"), "rows.xyz: cannot read files"),
        "dataset_broken_jsonl": (fit_data("broken_json"), "broken.jsonl"),
        "dataset_unknown_column": (fit_data("bad_column"), "no_such_column"),
        "dataset_unknown_formatting": (fit_data("bad_formatting"), "markdown"),
        "template_unknown": (fit("--data.init_args.template", "no_such_template"), "no_such_template"),
        # Loggers whose package is missing, null on the command line, quantizing a model built from a config.
        **({"logger_package_missing": (fit("--trainer.logger", f"lightning.pytorch.loggers.{ABSENT_LOGGER[0]}"),
                                       f"pip install '{ABSENT_LOGGER[1]}")} if ABSENT_LOGGER else {}),
        "config_null_on_command_line": (fit("--model.init_args.model.config", "null"),
                                        "model.init_args.model.config: null given on the command line"),
        "quantization_of_inline_config": (fit("--model.init_args.model.quantization", "BitsAndBytes"),
                                          "model.quantization"),
        # export
        "export_missing_model": (["export", "--model", str(root / "no_model"), "--output", str(root / "out1")],
                                 "--model: "),
        "export_missing_adapter": (["export", "--model", m, "--adapter", str(root / "no_adapter"), "--output",
                                    str(root / "out2")], "--adapter: "),
        "export_shard_size": (["export", "--model", m, "--output", str(root / "out3"), "--max-shard-size", "lots"],
                              "--max-shard-size 'lots': not a size"),
        "export_output_taken": (["export", "--model", m, "--output", str(taken_output)], "exists and is not empty"),
        "export_no_output": (["export", "--model", m], "--output"),
        "export_bad_dtype": (["export", "--model", m, "--output", str(root / "out4"), "--dtype", "int7"], "int7"),
        # serve / chat / eval / data
        "serve_port_out_of_range": (["serve", "--model", m, "--port", "99999"], "--port 99999: not a TCP port"),
        "serve_port_zero": (["serve", "--model", m, "--port", "0"], "--port 0"),
        "serve_port_in_use": (["serve", "--model", m, "--port", str(taken_port)], "another --port"),
        "serve_port_not_int": (["serve", "--model", m, "--port", "http"], "port"),
        "serve_model_missing": (["serve", "--model", str(root / "no_model")], "no_model"),
        "serve_zero_body_limit": (["serve", "--model", m, "--max-request-bytes", "0"], "--max-request-bytes"),
        "serve_bad_temperature": (["serve", "--model", m, "--temperature", "-1"], "temperature"),
        "chat_model_missing": (["chat", "--model", str(root / "no_model")], "no_model"),
        "data_missing_recipe": (["data", "--config", str(root / "nope.yaml")], "nope.yaml"),
    }


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the tiny quickstart model (2 steps)."""
    runs = tmp_path_factory.mktemp("trained")
    subprocess.run([sys.executable, "-m", "lit_factory", "fit", "--config", QUICKSTART,
                    "--trainer.logger.init_args.save_dir", str(runs), "--trainer.max_steps", "2",
                    "--trainer.val_check_interval", "2", "--data.init_args.val_size", "4",
                    "--model.init_args.model.config", TINY_CONFIG], check=True, capture_output=True, timeout=600)
    return next(runs.glob("quickstart/version_0/checkpoints/*.ckpt"))


@pytest.fixture(scope="module")
def evil_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (127.0.0.1) serving a checkpoint whose pickle would create a marker file."""
    folder = tmp_path_factory.mktemp("evil-server")
    marker = folder / "PWNED_REMOTE"
    write_evil_checkpoint(folder / "evil.ckpt", marker)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(folder))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt", marker
    server.shutdown()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, trained_checkpoint, evil_server):
    root = tmp_path_factory.mktemp("bad-input")
    base = save_tiny_base(tmp_path_factory.mktemp("tiny-base"))
    evil_url, remote_marker = evil_server
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cases = build_cases(root, trained_checkpoint, evil_url, base, taken.getsockname()[1])
        before = snapshot(root)
        logs = root.parent / f"{root.name}-logs"
        logs.mkdir()
        (logs / "cases.json").write_text(json.dumps({case: argv for case, (argv, _) in cases.items()}))
        subprocess.run([sys.executable, "-c", DRIVER, str(logs / "cases.json"), str(logs)], check=True, timeout=1500)
    codes = json.loads((logs / "results.json").read_text())
    outputs = {case: (logs / f"{case}.log").read_text(errors="replace") for case in cases}
    return dict(cases=cases, codes=codes, outputs=outputs, root=root, before=before, after=snapshot(root),
                markers=[root / "PWNED", remote_marker], checkpoint=trained_checkpoint)



def _case_ids() -> list[str]:
    # The ids without building files: run build_cases into a throwaway folder.
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        dummy = Path(folder) / "x.ckpt"
        dummy.write_bytes(b"0" * 8)
        return list(build_cases(Path(folder), dummy, "http://127.0.0.1:1/evil.ckpt", Path(folder), 1))


CASE_IDS = _case_ids()


def test_matrix_has_at_least_sixty_cases():
    assert len(CASE_IDS) >= 60


@pytest.mark.slow
@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_fails_in_one_line_with_status_2(matrix, case):
    argv, expected = matrix["cases"][case]
    output = matrix["outputs"][case]
    errors = [line for line in output.splitlines() if line.startswith("lit-factory: error:")]
    assert matrix["codes"][case] == 2, output[-2000:]
    assert len(errors) == 1, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert expected in errors[0], errors[0]
    assert len(errors[0]) < 800, errors[0]  # one line; a list of accepted names may make it long


@pytest.mark.slow
def test_nothing_lost_no_run_folder_left_and_no_pickle_executed(matrix):
    before, after = matrix["before"], matrix["after"]
    assert {name: digest for name, digest in before.items() if after.get(name) != digest} == {}
    assert list((matrix["root"] / "runs").glob("*/version_*")) == []
    assert not any(marker.exists() for marker in matrix["markers"])


@pytest.mark.slow
def test_our_own_checkpoint_still_resumes_with_weights_only(tmp_path, trained_checkpoint):
    """The positive control: weights_only=True loads a checkpoint lit-factory wrote, and training continues."""
    result = subprocess.run([sys.executable, "-m", "lit_factory", "fit", "--config", QUICKSTART,
                             "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_steps", "3",
                             "--data.init_args.val_size", "4", "--model.init_args.model.config", TINY_CONFIG,
                             "--ckpt_path", str(trained_checkpoint)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "quickstart" / "version_0" / "model.safetensors").is_file()
