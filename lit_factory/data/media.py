"""Images in conversations: how one vision-language model family writes them as tokens and feeds them to the model.

LLaMA-Factory's ``mm_plugin``, for image-text SFT. A conversation marks each image of its row's ``images`` with an
``<image>`` placeholder in the text (LLaMA-Factory's data convention). The plugin of the model's family

* replaces each placeholder by the image's tokens, as the family's Hugging Face processor does: Qwen2-VL (and
  Qwen2.5-VL, Qwen3-VL) writes
  ``<|vision_start|>`` + ``<|image_pad|>`` x N + ``<|vision_end|>`` with N = the image's patches (its
  ``image_grid_thw``) / ``merge_size``²; LLaVA writes ``<image>`` x N with N the vision tower's patches (+ its class
  token, less one with the ``default`` feature strategy). The image tokens sit in the user's turn, so they carry no
  loss;
* turns a batch's images into the model's inputs with the family's image processor: ``pixel_values`` (and Qwen2-VL's
  ``image_grid_thw`` and ``mm_token_type_ids``, which its M-RoPE positions need).

Why the image processor and not the family's composite processor (``Qwen2VLProcessor``): ours tokenise through the
chat template to keep exact loss masks, and the video-capable composites cannot even be built without torchvision
(their video processor needs it), while the ``*ImageProcessorPil`` classes need only PIL. Without torchvision (it
has no build for every CPU torch) image processors load with their PIL backend; one that has no PIL backend is
refused in one line.

The plugin is chosen by the model (its config's ``model_type``, see ``PLUGINS``), built by the model builder
(:func:`lit_factory.model.builder.build_media`) and handed to the data module with the tokenizer.
Videos and audios are not supported yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    import torch

#: The placeholder of one image in a conversation's text (LLaMA-Factory's ``IMAGE_PLACEHOLDER``).
IMAGE_PLACEHOLDER = "<image>"
#: Batch keys a plugin adds for the model's forward.
MODEL_INPUT_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


class ImagePlugin:
    """Base of the families: images -> tokens in the text and tensors for the model.

    Args:
        image_processor: the family's Hugging Face image processor (PIL backend).
        tokenizer: the model's tokenizer; it must know the family's image token(s).
    """

    #: ``model_type`` values of the configs this family serves.
    model_types: tuple[str, ...] = ()
    #: The token repeated once per image feature.
    image_token: str = IMAGE_PLACEHOLDER

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        vocabulary = tokenizer.get_vocab()
        # Checked when a row has images: a VLM may still train on text with a tokenizer that lacks them.
        self.missing_tokens = [token for token in self.special_tokens() if token not in vocabulary]
        self.image_token_id = vocabulary.get(self.image_token)

    # ---- what a family defines ---------------------------------------------------------------------------------
    @classmethod
    def special_tokens(cls) -> list[str]:
        """The tokens the plugin writes; the tokenizer must have each as one token."""
        return [cls.image_token]

    @classmethod
    def image_processor_from_config(cls, config: Any, min_pixels: int, max_pixels: int) -> Any:
        """The image processor of a model built from an inline config (no files to load it from)."""
        raise NotImplementedError

    @classmethod
    def config_token_ids(cls, tokenizer: Any) -> dict[str, int]:
        """Config fields naming the plugin's token ids, from the tokenizer (defaults of an inline config)."""
        return _known_ids(tokenizer, image_token_id=cls.image_token)

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many image tokens the model reads for an image of this size."""
        raise NotImplementedError

    def image_text(self, count: int) -> str:
        """The text that replaces one placeholder."""
        return self.image_token * count

    def pixel_inputs(self, images: list[Any], input_ids: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """The model's image inputs for a batch's images (in order) and its padded ``input_ids``."""
        return {"pixel_values": self.image_processor(images=images, return_tensors="pt")["pixel_values"]}

    # ---- shared mechanics --------------------------------------------------------------------------------------
    def fingerprint(self) -> tuple[str, str]:
        """What decides the token counts, for the data cache key."""
        return type(self).__name__, self.image_processor.to_json_string()

    def expand(self, messages: list[dict], images: list[str], where: str) -> tuple[list[dict], int]:
        """``messages`` with each ``<image>`` replaced by its image's tokens (one placeholder per image, in order),
        and the number of image tokens written."""
        if images and self.missing_tokens:
            raise LitFactoryError(
                f"{where} has images, but the tokenizer has no {self.missing_tokens} token(s), which "
                f"{type(self).__name__} writes for them. Fix: use the model's own tokenizer, or add them: "
                f"model.new_special_tokens: {self.special_tokens()}"
            )
        found = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in messages)
        if found != len(images):
            raise LitFactoryError(
                f"{where}: {found} {IMAGE_PLACEHOLDER} placeholder(s) in the text for {len(images)} image(s). "
                f"Fix: write one {IMAGE_PLACEHOLDER} in the messages for each entry of `images`, in order."
            )
        counts = [self.num_image_tokens(*image_size(path, where)) for path in images]
        remaining = iter(counts)
        expanded = []
        for message in messages:
            pieces = message["content"].split(IMAGE_PLACEHOLDER)
            content = pieces[0] + "".join(self.image_text(next(remaining)) + piece for piece in pieces[1:])
            expanded.append({**message, "content": content})
        return expanded, sum(counts)


class Qwen2VLImages(ImagePlugin):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: ``<|vision_start|><|image_pad|>*N<|vision_end|>``, N = patches / merge_size²."""

    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    image_token = "<|image_pad|>"

    @classmethod
    def special_tokens(cls) -> list[str]:
        return ["<|vision_start|>", cls.image_token, "<|vision_end|>"]

    @classmethod
    def config_token_ids(cls, tokenizer: Any) -> dict[str, int]:
        return _known_ids(tokenizer, image_token_id=cls.image_token, vision_start_token_id="<|vision_start|>",
                          vision_end_token_id="<|vision_end|>")

    @classmethod
    def image_processor_from_config(cls, config: Any, min_pixels: int, max_pixels: int) -> Any:
        from transformers import Qwen2VLImageProcessorPil

        vision = config.vision_config
        return Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size,
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        )

    def num_image_tokens(self, height: int, width: int) -> int:
        # Qwen2VLProcessor's count: the resized image's patches (grid t*h*w) over the merged 2x2 blocks.
        return self.image_processor.get_number_of_image_patches(height, width, {}) // self.image_processor.merge_size**2

    def image_text(self, count: int) -> str:
        return "<|vision_start|>" + self.image_token * count + "<|vision_end|>"

    def pixel_inputs(self, images: list[Any], input_ids: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        processed = self.image_processor(images=images, return_tensors="pt")
        # Modality of each position (1: image), which Qwen2-VL's M-RoPE reads to lay out 3-D positions.
        token_types = (input_ids == self.image_token_id).long()
        return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"],
                "mm_token_type_ids": token_types}


class LlavaImages(ImagePlugin):
    """LLaVA(-1.5): ``<image>`` x N, N = the vision tower's patches (+1 class token, -1 with ``default`` selection)."""

    model_types = ("llava",)

    def __init__(self, image_processor: Any, tokenizer: Any, patch_size: int, feature_select_strategy: str) -> None:
        super().__init__(image_processor, tokenizer)
        self.patch_size = patch_size
        self.feature_select_strategy = feature_select_strategy

    @classmethod
    def image_processor_from_config(cls, config: Any, min_pixels: int, max_pixels: int) -> Any:
        from transformers import CLIPImageProcessorPil

        side = config.vision_config.image_size  # a fixed-resolution tower: every image is resized and cropped to it
        return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})

    def num_image_tokens(self, height: int, width: int) -> int:
        # LlavaProcessor's count: the cropped image's patches, plus the CLIP class token, which the `default`
        # strategy drops again.
        crop = self.image_processor.crop_size
        tokens = (crop["height"] // self.patch_size) * (crop["width"] // self.patch_size) + 1
        return tokens - 1 if self.feature_select_strategy == "default" else tokens

    def fingerprint(self) -> tuple[str, str]:
        settings = f"{self.image_processor.to_json_string()} {self.patch_size} {self.feature_select_strategy}"
        return type(self).__name__, settings


def _known_ids(tokenizer: Any, **tokens: str) -> dict[str, int]:
    """Config field -> id of each token the tokenizer has (the others keep the config's defaults)."""
    vocabulary = tokenizer.get_vocab()
    return {field: vocabulary[token] for field, token in tokens.items() if token in vocabulary}


#: The image plugins by ``model_type``.
PLUGINS: dict[str, type[ImagePlugin]] = {name: plugin for plugin in (Qwen2VLImages, LlavaImages)
                                         for name in plugin.model_types}


def plugin_class(config: Any) -> type[ImagePlugin]:
    """The plugin class of a vision-language config, or one line naming the families supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in PLUGINS:
        raise LitFactoryError(
            f"model: image-text training does not support model_type {model_type!r} yet (supported: "
            f"{', '.join(sorted(PLUGINS))}). Fix: pick a model of those families."
        )
    return PLUGINS[model_type]


def build_plugin(config: Any, tokenizer: Any, path: Optional[str], min_pixels: int, max_pixels: int) -> ImagePlugin:
    """The plugin of a vision-language model: its image processor loaded from ``path`` (PIL backend) or, for an
    inline config, built from the vision config."""
    if path is not None:
        _check_pil_backend(path)
    plugin = plugin_class(config)
    if path is None:
        processor = plugin.image_processor_from_config(config, min_pixels, max_pixels)
    else:
        processor = load_image_processor(path, config, min_pixels, max_pixels)
    if plugin is LlavaImages:
        return LlavaImages(processor, tokenizer, config.vision_config.patch_size, config.vision_feature_select_strategy)
    return plugin(processor, tokenizer)


def load_image_processor(path: str, config: Any, min_pixels: int, max_pixels: int) -> Any:
    """A saved model's image processor with the PIL backend; one line when it has none (it needs torchvision)."""
    import importlib.util

    from transformers import AutoImageProcessor

    options: dict[str, Any] = {}
    if importlib.util.find_spec("torchvision") is None:
        options["backend"] = "pil"
    if config.model_type in Qwen2VLImages.model_types:
        options["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    try:
        return AutoImageProcessor.from_pretrained(path, **options)
    except (OSError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LitFactoryError(f"model.path: cannot load the image processor of {path!r}: {first_line}") from err


def _check_pil_backend(path: str) -> None:
    """One line when torchvision is missing and the model folder names an image processor without a PIL backend."""
    import importlib.util

    import transformers

    declared = _declared_image_processor(path)
    if importlib.util.find_spec("torchvision") is None and declared and not declared.endswith("Pil") and not hasattr(
            transformers, f"{declared}Pil"):
        raise LitFactoryError(
            f"model.path: {path!r} uses the image processor {declared}, which needs torchvision (it has no PIL "
            "backend), and torchvision is not installed. Fix: pip install torchvision matching your torch."
        )


def _declared_image_processor(path: str) -> Optional[str]:
    """The image processor class a local model folder names (``preprocessor_config.json``), if it names one."""
    import json

    config_file = Path(path, "preprocessor_config.json")
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("image_processor_type")
    except (OSError, ValueError):
        return None


def resolve_media(paths: list[str], media_dir: str, where: str) -> list[str]:
    """Media paths of a row made absolute (relative ones are read from the dataset folder, as in LLaMA-Factory)."""
    resolved = []
    for path in paths:
        if "://" in path:
            raise LitFactoryError(f"{where}: image {path!r} is a URL; remote images are not supported yet. "
                                  "Fix: download it and give its path relative to the dataset folder.")
        resolved.append(str(Path(media_dir, path).resolve()))
    return resolved


def image_size(path: str, where: str) -> tuple[int, int]:
    """(height, width) of an image file (PIL reads only the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError) as err:
        raise LitFactoryError(f"{where}: cannot read image {path!r} ({err}). Fix: replace or remove the file."
                              ) from None


def load_images(paths: list[str]) -> list[Any]:
    """The images as RGB PIL images (what every image processor accepts)."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def check_unsupported_media(batch: dict[str, list], index: int, where: str) -> None:
    """One line when a row carries videos or audios: not supported yet."""
    for key in ("videos", "audios"):
        if batch.get(key) and batch[key][index]:
            raise LitFactoryError(f"{where} has {key}: {key[:-1]} input is not supported yet (images are). "
                                  f"Fix: remove the {key!r} column from the dataset entry, or use image data.")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The image inputs of a batch for the model's forward; one line when the batch still holds media paths (the
    model has no image processor: a text-only model given image data)."""
    for key in ("images", "videos", "audios"):
        if batch.get(key):
            raise LitFactoryError(
                f"data: the batches carry {key} but the model has no image processor (it is not a supported "
                f"vision-language model), so they would be ignored. Fix: use a vision-language model "
                f"({', '.join(sorted(PLUGINS))}) or a dataset entry without {key!r}."
            )
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


class MediaCollator:
    """Wraps a collator: the batch's image paths become the model's image inputs (see ``ImagePlugin.pixel_inputs``).

    Args:
        collate: the collator of the objective (it pads ids and passes the ``images`` path lists through).
        plugin: the model family's image plugin.
    """

    def __init__(self, collate: Any, plugin: ImagePlugin) -> None:
        self.collate = collate
        self.plugin = plugin

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        paths = [path for row in batch.pop("images", []) for path in row]
        if paths:
            batch.update(self.plugin.pixel_inputs(load_images(paths), batch["input_ids"]))
        return batch
