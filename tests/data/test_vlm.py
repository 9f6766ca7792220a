"""Image-text SFT on LLaMA-Factory's mllm_demo with tiny random vision-language models built from config.

References: the families' own Hugging Face processors (``Qwen2VLProcessor``, ``LlavaProcessor``) for the expanded
token ids and the pixel tensors, plain PEFT for reloading the adapter."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from lit_factory.cli import main
from lit_factory.data import DataModule
from lit_factory.data.media import IMAGE_PLACEHOLDER, image_size, load_images, model_inputs
from lit_factory.errors import LitFactoryError
from lit_factory.model import Full, LoRA, ModelArgs, build_inference_model, build_model, build_tokenizer
from lit_factory.model.builder import build_media
from lit_factory.model.patches import vision_module_prefixes
from lit_factory.stages import SFT
from tiny_models import SPARROW, quiet_trainer

QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
QWEN_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                         "rope_theta": 10000.0})
FAMILIES = {
    "qwen2_vl": (dict(model_type="qwen2_vl", text_config=dict(QWEN_TEXT, model_type="qwen2_vl_text"),
                      vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                                         spatial_merge_size=2, temporal_patch_size=2)), QWEN_TOKENS),
    "qwen2_5_vl": (dict(model_type="qwen2_5_vl", text_config=dict(QWEN_TEXT, model_type="qwen2_5_vl_text"),
                        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                                           out_hidden_size=64, spatial_merge_size=2, temporal_patch_size=2,
                                           fullatt_block_indexes=[1], window_size=56)), QWEN_TOKENS),
    "qwen3_vl": (dict(model_type="qwen3_vl",
                      text_config=dict(QWEN_TEXT, model_type="qwen3_vl_text", head_dim=16, rope_parameters={
                          **QWEN_TEXT["rope_parameters"], "mrope_interleaved": True}),
                      vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                                         out_hidden_size=64, spatial_merge_size=2, temporal_patch_size=2,
                                         num_position_embeddings=64, deepstack_visual_indexes=[0])), QWEN_TOKENS),
    "llava": (dict(model_type="llava", vision_feature_layer=-2, vision_feature_select_strategy="default",
                   text_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2),
                   vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14,
                                      projection_dim=32)), [IMAGE_PLACEHOLDER]),
}
SMALL_IMAGES = dict(image_max_pixels=128 * 128)  # mllm_demo's 300x170 photos -> ~50 image tokens (Qwen2-VL)


def family_args(family: str, **options) -> ModelArgs:
    config, tokens = FAMILIES[family]
    return ModelArgs(config=json.loads(json.dumps(config)), tokenizer=SPARROW, new_special_tokens=tokens,
                     **{**SMALL_IMAGES, **options})


def reference_processor(family: str, plugin, tokenizer):
    """The family's own Hugging Face processor around the same image processor."""
    from transformers import LlavaProcessor, Qwen2VLProcessor, Qwen3VLProcessor

    if family == "llava":
        return LlavaProcessor(image_processor=plugin.image_processor, tokenizer=tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", image_token=IMAGE_PLACEHOLDER,
                              num_additional_image_tokens=1)

    class ImageOnlyProcessor(Qwen3VLProcessor if family == "qwen3_vl" else Qwen2VLProcessor):
        # The Qwen processors insist on a video processor, which needs torchvision; images need none.
        def __init__(self, image_processor=None, tokenizer=None, **kwargs):
            super().__init__(image_processor, tokenizer, **kwargs)

    return ImageOnlyProcessor(image_processor=plugin.image_processor, tokenizer=tokenizer)


def demo_data(peer_data_dir, tokenizer, media, **options) -> DataModule:
    options = {"dataset": "mllm_demo", "batch_size": 6, "cutoff_len": 2048, **options}
    data = DataModule(dataset_dir=str(peer_data_dir), tokenizer=tokenizer, media=media, template="chatml",
                      shuffle=False, **options)
    data.setup()
    return data


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava"])
def test_placeholders_expand_to_the_processors_tokens_and_pixels(family, peer_data_dir):
    args = family_args(family)
    tokenizer = build_tokenizer(args)
    plugin = build_media(args, tokenizer)
    data = demo_data(peer_data_dir, tokenizer, plugin)
    processor = reference_processor(family, plugin, tokenizer)
    single = "<|vision_start|><|image_pad|><|vision_end|>" if family != "llava" else IMAGE_PLACEHOLDER
    raw = json.loads((peer_data_dir / "mllm_demo.json").read_text())
    assert len(data.train_set) == len(raw)
    for row, example in zip(raw, data.train_set):
        messages = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, single)} for m in row["messages"]]
        text = "".join(piece for turn in data.template.render_turns(messages, None, "", "<|im_end|>")
                       for piece in turn)
        images = load_images([str(peer_data_dir / path) for path in row["images"]])
        expected = processor(text=[text], images=images)["input_ids"][0]
        assert example["input_ids"] == list(expected)  # the processor's expansion, token for token
        image_positions = [i for i, t in enumerate(example["input_ids"]) if t == plugin.image_token_id]
        assert len(image_positions) >= len(row["images"]) and all(example["labels"][i] == -100 for i in image_positions)
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        labelled = tokenizer.decode([t for t in example["labels"] if t != -100])
        assert labelled == "".join(reply + "<|im_end|>" for reply in replies)  # loss on the replies only

    batch = next(iter(data.train_dataloader()))
    every_image = load_images([str(peer_data_dir / path) for row in raw for path in row["images"]])
    reference = processor.image_processor(images=every_image, return_tensors="pt")
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])
    if family != "llava":
        assert torch.equal(batch["image_grid_thw"], reference["image_grid_thw"])
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == plugin.image_token_id).long())
    assert "images" not in batch

    # A row is left out when cutoff_len would cut into its image tokens (the model needs every one of them).
    last_image_token = [max(i for i, t in enumerate(row["input_ids"]) if t == plugin.image_token_id)
                        for row in data.train_set]
    short = demo_data(peer_data_dir, tokenizer, plugin, cutoff_len=max(last_image_token))  # cuts the last one
    assert 0 < len(short.train_set) < len(raw)
    for row in short.train_set:
        expected = sum(plugin.num_image_tokens(*image_size(path, "")) for path in row["images"])
        assert row["input_ids"].count(plugin.image_token_id) == expected


def save_base(family: str, directory: Path) -> Path:
    """A tiny random VLM saved like a hub checkpoint: weights, tokenizer, preprocessor_config.json."""
    args = family_args(family)
    tokenizer = build_tokenizer(args)
    torch.manual_seed(0)
    build_inference_model(args, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    build_media(args, tokenizer).image_processor.save_pretrained(directory)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_lora_sft_learns_keeps_the_vision_tower_and_reloads_with_peft(family, peer_data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = save_base(family, tmp_path / "base")
    stage = SFT(model=ModelArgs(path=str(base), **SMALL_IMAGES), finetuning=LoRA(r=8),
                optimizer=lambda params: torch.optim.AdamW(params, lr=2e-2))
    data = demo_data(peer_data_dir, stage.tokenizer, stage.media, batch_size=2)
    probe = next(iter(data.train_dataloader()))
    stage.configure_model()
    vision = {name: p.detach().clone() for name, p in stage.model.named_parameters()
              if any(name.startswith(prefix + ".") for prefix in vision_module_prefixes(stage.model))}
    assert vision and not any(p.requires_grad for n, p in stage.model.named_parameters() if n in vision)
    lora_layers = [n for n, _ in stage.model.named_modules() if n.endswith("lora_A")]
    assert lora_layers and not any(n.startswith(tuple(p + "." for p in vision_module_prefixes(stage.model)))
                                   for n in lora_layers)  # `all` = the language model's linear layers
    with torch.no_grad():
        before = float(stage.eval().loss(probe))
    quiet_trainer(tmp_path / "run", max_steps=12).fit(stage, data)
    stage.eval()
    with torch.no_grad():
        after = float(stage.loss(probe))
        logits = stage(probe["input_ids"], probe["attention_mask"], **model_inputs(probe)).logits
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(p, vision[n]) for n, p in stage.model.named_parameters() if n in vision)

    assert (tmp_path / "run" / "preprocessor_config.json").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), tmp_path / "run").eval()
    with torch.no_grad():
        again = reloaded(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                         **model_inputs(probe)).logits
    torch.testing.assert_close(again, logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_qwen2_5_vl_example_of_llamafactory_trains_unchanged_on_mixed_data(peer_data_dir, tmp_path):
    """LLaMA-Factory's qwen2_5vl_lora_sft.yaml: image rows (mllm_demo) mixed with text rows in the same batches."""
    base = save_base("qwen2_5_vl", tmp_path / "base")
    example = Path(__file__).resolve().parents[1] / "fixtures/llamafactory/train_lora/qwen2_5vl_lora_sft.yaml"
    output_dir = tmp_path / "out"
    overrides = [f"model_name_or_path={base}", "template=chatml", f"dataset_dir={peer_data_dir}",
                 f"output_dir={output_dir}", "max_steps=2", "max_samples=6", "logging_steps=1",
                 "preprocessing_num_workers=null", "dataloader_num_workers=0", "bf16=false",
                 "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "image_max_pixels=16384"]
    assert main(["train", str(example), *overrides]) == 0
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert (output_dir / "preprocessor_config.json").is_file()


def test_llamafactory_multimodal_keys_translate():
    from lit_factory.compat.llamafactory import translate

    translation = translate({"model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "stage": "sft",
                             "dataset": "mllm_demo", "image_max_pixels": 262144, "image_min_pixels": 1024,
                             "freeze_vision_tower": False, "freeze_multi_modal_projector": False,
                             "video_max_pixels": 16384, "video_fps": 2.0})
    model = translation.recipe["model"]["init_args"]["model"]
    assert (model["image_max_pixels"], model["image_min_pixels"]) == (262144, 1024)
    assert (model["freeze_vision_tower"], model["freeze_multi_modal_projector"]) == (False, False)
    video = [w for w in translation.warnings if w.startswith(("`video_max_pixels`", "`video_fps`"))]
    assert len(video) == 2 and all("video and audio input are not supported yet" in w for w in video)


def test_freeze_flags_choose_what_trains():
    # Qwen2-VL: tower = model.visual (patch_embed, blocks), projector = model.visual.merger.
    def trainable(model):
        return {n for n, p in model.named_parameters() if p.requires_grad}

    args = family_args("qwen2_vl")
    tokenizer = build_tokenizer(args)
    lora_tower = build_model(family_args("qwen2_vl", freeze_vision_tower=False), tokenizer, LoRA(r=2))
    targeted = {n for n, _ in lora_tower.named_modules() if n.endswith("lora_A")}
    assert any(".visual.blocks." in n for n in targeted) and not any(".merger." in n for n in targeted)
    lora_projector = build_model(family_args("qwen2_vl", freeze_multi_modal_projector=False), tokenizer, LoRA(r=2))
    assert {n for n in trainable(lora_projector) if ".visual." in n} and all(
        ".merger.modules_to_save." in n for n in trainable(lora_projector) if ".visual." in n)
    full = build_model(family_args("qwen2_vl", freeze_multi_modal_projector=False), tokenizer, Full())
    assert {n for n in trainable(full) if ".visual." in n} == {
        n for n, _ in full.named_parameters() if ".visual.merger." in n}
    llava = build_model(family_args("llava"), build_tokenizer(family_args("llava")), Full())
    assert not any(n.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for n in trainable(llava))


def write_dataset(folder: Path, peer_data_dir: Path, rows: list[dict], **columns) -> Path:
    folder.mkdir()
    shutil.copytree(peer_data_dir / "mllm_demo_data", folder / "mllm_demo_data")
    (folder / "rows.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"rows": {
        "file_name": "rows.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", **columns},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    return folder


def test_bad_multimodal_input_stops_in_one_line(peer_data_dir, tmp_path):
    args = family_args("qwen2_vl")
    tokenizer = build_tokenizer(args)
    plugin = build_media(args, tokenizer)
    turn = [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER}Who?"},
            {"role": "assistant", "content": "Players."}]
    folder = write_dataset(tmp_path / "mismatch", peer_data_dir, [
        {"messages": turn[:1] + [{"role": "assistant", "content": "ok"}], "images": ["mllm_demo_data/1.jpg"] * 2},
        {"messages": turn, "images": ["mllm_demo_data/1.jpg"]}])
    with pytest.raises(LitFactoryError, match=r"rows.json row 1: 2 <image> placeholder\(s\) in the text for 1 image"):
        demo_data(folder, tokenizer, plugin, dataset="rows")

    video = write_dataset(tmp_path / "video", peer_data_dir, [{"messages": turn, "images": ["mllm_demo_data/1.jpg"] * 2,
                                                               "videos": ["mllm_demo_data/1.jpg"]}], videos="videos")
    with pytest.raises(LitFactoryError, match=r"row 0 has videos: video input is not supported yet"):
        demo_data(video, tokenizer, plugin, dataset="rows")

    text_only = demo_data(peer_data_dir, tokenizer, None)  # a text model's data: the paths pass through
    with pytest.raises(LitFactoryError, match=r"the batches carry images but the model has no image processor"):
        model_inputs(next(iter(text_only.train_dataloader())))

    with pytest.raises(LitFactoryError, match=r"image input is supported for supervised fine-tuning \(SFT\) only"):
        DataModule(dataset="mllm_demo", dataset_dir=str(peer_data_dir), tokenizer=tokenizer, media=plugin,
                   template="chatml", objective="prompt", batch_size=2).prepare("mllm_demo")


def test_unsupported_families_and_torchvision_only_processors_are_named(tmp_path):
    paligemma = ModelArgs(config={"model_type": "paligemma"}, tokenizer=SPARROW)
    with pytest.raises(LitFactoryError, match=r"does not support model_type 'paligemma' yet \(supported: .*llava"):
        build_media(paligemma, build_tokenizer(paligemma))
    base = save_base("qwen2_vl", tmp_path / "base")
    assert type(build_media(ModelArgs(path=str(base)), build_tokenizer(ModelArgs(path=str(base))))).__name__ == \
        "Qwen2VLImages"
    settings = json.loads((base / "preprocessor_config.json").read_text())
    settings["image_processor_type"] = "Sam2ImageProcessor"  # SAM 2's has no PIL backend
    (base / "preprocessor_config.json").write_text(json.dumps(settings))
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(LitFactoryError, match=r"Sam2ImageProcessor, which needs torchvision"):
            build_media(ModelArgs(path=str(base)), build_tokenizer(ModelArgs(path=str(base))))
