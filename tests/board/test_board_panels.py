"""The Train tab's typed panels without a server: each panel value lands under the recipe key that
``lit-factory fit`` reads (checked on ``fit --print_config``'s resolved config), the preview command resolves to the
same config as the recipe file, saved arguments load back into the same form, and the choices come from the classes
that own them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from lit_factory.board import panels  # noqa: E402
from lit_factory.board import recipe as recipes  # noqa: E402
from lit_factory.board.assemble import assemble_recipe, recipe_yaml  # noqa: E402
from lit_factory.board.command import CONTINUATION, fit_command  # noqa: E402
from lit_factory.cli import main  # noqa: E402
from lit_factory.errors import LitFactoryError  # noqa: E402


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """A workspace with a preference and a KTO dataset (names only matter: print_config reads no data)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.json").write_text("[]")
    (data / "tagged.json").write_text("[]")
    (data / "dataset_info.json").write_text(json.dumps({
        "pairs": {"file_name": "pairs.json", "ranking": True, "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "tagged": {"file_name": "tagged.json", "formatting": "sharegpt",
                   "columns": {"messages": "messages", "kto_tag": "label"}},
    }))
    (tmp_path / "runs" / "reward").mkdir(parents=True)
    (tmp_path / "runs" / "reward" / "adapter_config.json").write_text("{}")  # what ModelArgs.adapter checks
    monkeypatch.chdir(tmp_path)  # recipes name paths relative to the workspace, where runs start
    return tmp_path


def resolved(args: list[str], capsys) -> dict[str, Any]:
    """``lit-factory fit ARGS --print_config`` (in-process) as a dict."""
    capsys.readouterr()
    assert main([*args, "--print_config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def build(base_name: str, workspace: Path, **changes: Any) -> tuple[dict, dict, recipes.TrainForm]:
    base = recipes.load_recipe(base_name)
    form = recipes.form_from_recipe(base, run_name="panels")
    form.output_dir = "runs/board"
    for name, value in changes.items():
        if name in panels.STAGE_FIELDS:
            form.stage_panels[name] = value
        else:
            setattr(form, name, value)
    return base, assemble_recipe(base, form, workspace), form


CASES = {
    "model options, GaLore, packing, devices, CSV logger": ("quickstart.yaml", dict(
        attn_implementation="eager", rope_scaling="dynamic", neftune_alpha=5, gradient_checkpointing=True,
        packing=True, optimizer="GaLore", learning_rate="2e-5", galore_rank=4, galore_update_interval=7,
        galore_scale=0.5, galore_target_modules="q_proj, v_proj", devices="2", strategy="ddp", logger="csv",
        max_steps="3"), {
        "model.init_args.model.attn_implementation": "eager",
        "model.init_args.model.patches.0.class_path": "lit_factory.model.patches.RopeScaling",
        "model.init_args.model.patches.0.init_args.kind": "dynamic",
        "model.init_args.model.patches.0.init_args.context_length": 128,
        "model.init_args.model.patches.1.class_path": "lit_factory.model.patches.NEFTune",
        "model.init_args.model.patches.1.init_args.alpha": 5.0,
        "model.init_args.model.gradient_checkpointing": True, "data.init_args.packing": True,
        "model.init_args.optimizer.class_path": "lit_factory.optim.GaLore",
        "model.init_args.optimizer.init_args.rank": 4, "model.init_args.optimizer.init_args.update_interval": 7,
        "model.init_args.optimizer.init_args.scale": 0.5, "model.init_args.optimizer.init_args.lr": 2e-5,
        "model.init_args.optimizer.init_args.target_modules": ["q_proj", "v_proj"], "trainer.devices": "2",
        "trainer.strategy": "ddp", "trainer.logger.class_path": "lightning.pytorch.loggers.CSVLogger",
        "trainer.max_steps": 3}),
    "DPO panel, BAdam, S2-Attn": ("sft/lora.yaml", dict(
        stage="DPO", method="Full", method_options="", datasets=["pairs"], dataset_dir="data", dpo_beta=0.25,
        dpo_loss_type="ipo", dpo_sft_weight=0.5, optimizer="BAdam", learning_rate="3e-6", badam_switch_every=9, badam_order="random",
        strategy="deepspeed_stage_2", shift_attn=True), {
        "model.class_path": "lit_factory.stages.DPO", "model.init_args.beta": 0.25,
        "model.init_args.loss_type": "ipo", "model.init_args.sft_weight": 0.5,
        "model.init_args.optimizer.class_path": "lit_factory.optim.BAdam",
        "model.init_args.optimizer.init_args.switch_every": 9, "model.init_args.optimizer.init_args.order": "random",
        "model.init_args.optimizer.init_args.optimizer.init_args.lr": 3e-6,
        "trainer.strategy": "deepspeed_stage_2",
        "model.init_args.model.patches.0.class_path": "lit_factory.model.patches.ShiftedSparseAttention"}),
    "KTO weights, nf4 adapter": ("sft/lora.yaml", dict(
        stage="KTO", datasets=["tagged"], dataset_dir="data", kto_beta=0.3, kto_desirable_weight=1.5,
        kto_undesirable_weight=0.75, quantization="nf4", adapter="runs/reward"), {
        "model.class_path": "lit_factory.stages.KTO", "model.init_args.beta": 0.3,
        "model.init_args.desirable_weight": 1.5, "model.init_args.undesirable_weight": 0.75,
        "model.init_args.model.quantization.class_path": "lit_factory.model.quantization.BitsAndBytes",
        "model.init_args.model.quantization.init_args.bits": 4,
        "model.init_args.model.quantization.init_args.quant_type": "nf4",
        "model.init_args.model.adapter": "runs/reward"}),
    "PPO options": ("ppo/lora.yaml", dict(
        datasets=["pairs"], dataset_dir="data", ppo_reward_model="runs/reward", ppo_reward_model_type="full",
        ppo_epochs=2, ppo_mini_batch_size=3, ppo_max_new_tokens=17, ppo_temperature=0.7, ppo_top_p=0.9,
        ppo_init_kl_coef=0.05, ppo_target_kl="", ppo_cliprange=0.3, ppo_vf_coef=0.2, ppo_whiten_rewards=True), {
        "model.init_args.reward_model": "runs/reward", "model.init_args.reward_model_type": "full",
        "model.init_args.ppo_epochs": 2, "model.init_args.mini_batch_size": 3, "model.init_args.max_new_tokens": 17,
        "model.init_args.temperature": 0.7, "model.init_args.top_p": 0.9, "model.init_args.init_kl_coef": 0.05,
        "model.init_args.target_kl": None, "model.init_args.cliprange": 0.3, "model.init_args.vf_coef": 0.2,
        "model.init_args.whiten_rewards": True}),
}


def dig(config: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[int(key)] if isinstance(config, list) else config[key]
    return config


@pytest.mark.parametrize("case", list(CASES))
def test_panel_values_land_in_the_recipe_fit_reads_and_the_command_matches(case, workspace, capsys):
    base_name, changes, expected = CASES[case]
    base, recipe, _ = build(base_name, workspace, **changes)
    for dotted, value in expected.items():
        assert dig(recipe, dotted) == value, dotted
    path = workspace / "recipe.yaml"
    path.write_text(recipe_yaml(recipe))
    from_file = resolved(["fit", "--config", str(path)], capsys)
    for dotted, value in expected.items():  # fit accepted every key and kept its value
        assert dig(from_file, dotted) == value, dotted
    # The preview command, as shown (after its `cd` into the workspace), resolves to the same configuration.
    command = fit_command(base_name, base, recipe, workspace)
    assert command.count(CONTINUATION) == command.count("\n") and command.count("\n") >= 3  # one override a line
    cd, _, words = command.replace(CONTINUATION, " ").partition(" && ")
    assert cd == f"cd {shlex.quote(str(workspace))}"
    argv = shlex.split(words)
    assert argv[:4] == ["lit-factory", "fit", "--config", f"recipes/{base_name}"]
    assert resolved(argv[1:], capsys) == from_file


@pytest.mark.parametrize("changes, message", [
    ({"quantization": "nf4"}, "quantization: quantizes a pre-trained model"),  # quickstart: an inline config
    ({"model_path": "Qwen/Qwen2.5-0.5B", "quantization": "nf4"}, "only adapters train on a quantized model"),
    ({"optimizer": "GaLore", "method": "LoRA", "method_options": ""}, "optimizer GaLore: trains every parameter"),
    ({"shift_attn": True, "attn_implementation": "eager"}, "S²-Attn: runs on SDPA"),
    ({"liger_kernel": True}, "Liger kernels: liger-kernel is not installed"),
    ({"devices": "two"}, "devices: 'two'"),
    ({"strategy": "warp_drive"}, "strategy: 'warp_drive' is unknown"),
    ({"stage": "DPO", "dpo_loss_type": "cubic"}, "DPO loss_type: 'cubic' is unknown"),
    ({"stage": "DPO", "dpo_beta": "big"}, "DPO beta: 'big' is not a number"),
    ({"stage": "PPO", "method": "LoRA", "ppo_reward_model": ""}, "PPO reward_model: empty"),
    ({"attn_implementation": "flash_attention_2"}, "attention: 'flash_attention_2'"),
])
def test_bad_panel_values_are_one_line_errors(workspace, changes, message):
    if changes.get("attn_implementation") == "flash_attention_2" and "flash_attention_2" in panels.attentions():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(LitFactoryError) as raised:
        build("quickstart.yaml", workspace, **changes)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_liger_toggle_where_liger_is_installed_lands_in_the_recipe(workspace, capsys, monkeypatch):
    monkeypatch.setattr(panels, "liger_available", lambda: True)  # liger-kernel needs CUDA; not installable here
    liger = "lit_factory.model.patches.LigerKernels"
    _, recipe, _ = build("quickstart.yaml", workspace, liger_kernel=True)
    assert dig(recipe, "model.init_args.model.patches.0.class_path") == liger
    path = workspace / "recipe.yaml"
    path.write_text(recipe_yaml(recipe))
    assert dig(resolved(["fit", "--config", str(path)], capsys), "model.init_args.model.patches.0.class_path") == liger
    _, plain, _ = build("quickstart.yaml", workspace)
    assert "patches" not in plain["model"]["init_args"]["model"]


def test_model_parts_the_panel_does_not_show_are_kept_and_its_own_keep_their_places(workspace, capsys):
    patches, bnb = "lit_factory.model.patches", "lit_factory.model.quantization.BitsAndBytes"
    base = recipes.load_recipe("sft/lora.yaml")
    base["model"]["init_args"]["model"].update(
        path="Qwen/Qwen2.5-0.5B",
        quantization={"class_path": bnb, "init_args": {"bits": 4, "quant_type": "fp4", "double_quantization": False}},
        patches=[{"class_path": f"{patches}.FastLoRA"},
                 {"class_path": f"{patches}.NEFTune", "init_args": {"alpha": 3.0}},
                 {"class_path": f"{patches}.CompileLayers"}])
    form = recipes.form_from_recipe(base, run_name="parts")
    assert (form.quantization, form.neftune_alpha, form.shift_attn, form.rope_scaling) == ("fp4", 3.0, False, "none")
    form.output_dir, form.dataset_dir, form.datasets = "runs/board", "data", ["pairs"]
    form.shift_attn = True
    model = assemble_recipe(base, form, workspace)["model"]["init_args"]["model"]
    assert model["quantization"] == base["model"]["init_args"]["model"]["quantization"]  # double_quantization kept
    assert model["patches"] == [{"class_path": f"{patches}.FastLoRA"},
                                {"class_path": f"{patches}.NEFTune", "init_args": {"alpha": 3.0}},
                                {"class_path": f"{patches}.CompileLayers"},
                                {"class_path": f"{patches}.ShiftedSparseAttention"}]
    form.quantization, form.neftune_alpha, form.shift_attn = "int8", 0, False
    model = assemble_recipe(base, form, workspace)["model"]["init_args"]["model"]
    assert model["quantization"] == {"class_path": bnb, "init_args": {"bits": 8, "double_quantization": False}}
    assert model["patches"] == [{"class_path": f"{patches}.FastLoRA"}, {"class_path": f"{patches}.CompileLayers"}]
    form.quantization = "none"
    assert assemble_recipe(base, form, workspace)["model"]["init_args"]["model"]["quantization"] is None


def test_choices_come_from_the_classes_that_own_them():
    from lightning.pytorch.strategies import StrategyRegistry

    assert panels.quantizations() == ["none", "nf4", "fp4", "int8"]
    assert {"sdpa", "eager"} <= set(panels.attentions())
    assert panels.rope_scalings() == ["none", "linear", "dynamic"]
    assert {"ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3"} <= set(panels.strategies())
    assert set(panels.strategies()) - {"auto"} <= set(StrategyRegistry.available_strategies())
    assert panels.stage_arg_choices("DPO", "loss_type") == ["sigmoid", "ipo", "hinge"]
    assert panels.stage_arg_kind("PPO", "whiten_rewards") == "bool"
    assert panels.stage_arg_kind("PPO", "target_kl") == "optional_float"


def test_saved_arguments_load_back_into_the_same_form(workspace):
    from lit_factory.board.tabs.train import save_recipe
    from lit_factory.board.workspace import Workspace

    _, recipe, form = build("sft/lora.yaml", workspace, stage="DPO", datasets=["pairs"], dataset_dir="data",
                            dpo_beta=0.4, attn_implementation="eager", gradient_checkpointing=False,
                            packing=True, lora_r=16, logger="csv", devices="1")
    saved = save_recipe(Workspace(workspace), "args/dpo.yaml", recipe_yaml(recipe))
    assert saved == workspace / "args" / "dpo.yaml"
    loaded = recipes.form_from_recipe(recipes.load_recipe("args/dpo.yaml", Workspace(workspace)), "panels")
    assert recipes.form_values(loaded) == recipes.form_values(form)
    # saving again over the board's own file is fine; over a file it did not write, refused
    save_recipe(Workspace(workspace), "args/dpo.yaml", recipe_yaml(recipe))
    (workspace / "notes.yaml").write_text("mine: true\n")
    with pytest.raises(LitFactoryError, match="was not written by the board"):
        save_recipe(Workspace(workspace), "notes.yaml", recipe_yaml(recipe))
    assert (workspace / "notes.yaml").read_text() == "mine: true\n"
