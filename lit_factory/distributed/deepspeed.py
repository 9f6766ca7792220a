"""DeepSpeed ZeRO through Lightning's ``DeepSpeedStrategy``, also from a DeepSpeed JSON file such as
LLaMA-Factory's ``examples/deepspeed/ds_z3_config.json`` whose ``"auto"`` values come from the run's settings."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from lightning.pytorch.strategies import DeepSpeedStrategy

from lit_factory.errors import LitFactoryError

#: Precisions whose DeepSpeed switch (``fp16.enabled`` / ``bf16.enabled``) is on.
FP16_PRECISIONS = ("16-mixed", "16-true")
BF16_PRECISIONS = ("bf16-mixed", "bf16-true")


def resolve_auto_values(
    config: dict[str, Any],
    *,
    micro_batch_size: int,
    accumulate_grad_batches: int,
    world_size: int,
    gradient_clip_val: Optional[float],
    precision: str,
    hidden_size: Optional[int],
    source: str = "trainer.strategy.init_args.config",
) -> dict[str, Any]:
    """A copy of a DeepSpeed config with its ``"auto"`` values filled from the run, by the rules of transformers'
    ``HfTrainerDeepSpeedConfig`` (what LLaMA-Factory's JSON files are written for): micro-batch = the data's
    ``batch_size``, accumulation = ``trainer.accumulate_grad_batches``, ``train_batch_size`` = world size × both,
    clipping = ``trainer.gradient_clip_val`` (0: off), ``fp16``/``bf16`` from ``trainer.precision``, and the bucket
    sizes from the model's hidden size h (h², 0.9·h², 10·h). A value that is set and disagrees with the run is an
    error, as in transformers: DeepSpeed would silently train something else than the recipe says.
    """
    config = copy.deepcopy(config)
    batch = world_size * micro_batch_size * accumulate_grad_batches
    zero = config.get("zero_optimization") or {}
    settings: list[tuple[dict[str, Any], str, Any, str]] = [
        (config, "train_micro_batch_size_per_gpu", micro_batch_size, "data.init_args.batch_size"),
        (config, "gradient_accumulation_steps", accumulate_grad_batches, "trainer.accumulate_grad_batches"),
        (config, "train_batch_size", batch, "world size x batch_size x accumulate_grad_batches"),
        (config, "gradient_clipping", float(gradient_clip_val or 0.0), "trainer.gradient_clip_val"),
    ]
    for section, flag in (("fp16", precision in FP16_PRECISIONS), ("bf16", precision in BF16_PRECISIONS)):
        if isinstance(config.get(section), dict):
            settings.append((config[section], "enabled", flag, f"trainer.precision ({precision})"))
    for key, value in (("reduce_bucket_size", None if hidden_size is None else hidden_size * hidden_size),
                       ("stage3_prefetch_bucket_size", None if hidden_size is None else int(0.9 * hidden_size ** 2)),
                       ("stage3_param_persistence_threshold", None if hidden_size is None else 10 * hidden_size)):
        if zero.get(key) == "auto":
            if value is None:
                raise LitFactoryError(f"{source}: zero_optimization.{key} is 'auto' but the model's config has no "
                                      "hidden_size. Fix: give a number in the JSON file.")
            zero[key] = value
    for section, key, value, origin in settings:
        if key not in section:
            continue
        if section[key] == "auto":
            section[key] = value
        elif section[key] != value and not (key == "gradient_clipping" and gradient_clip_val is None):
            raise LitFactoryError(f"{source}: {key} is {section[key]!r} but {origin} makes it {value!r}. Fix: set "
                                  f"it to \"auto\" in the JSON file, or change {origin}.")
    left = sorted(_auto_keys(config))
    if left:
        raise LitFactoryError(f"{source}: {', '.join(left)} stay 'auto' (lit-factory fills only batch sizes, "
                              "accumulation, clipping, fp16/bf16 and bucket sizes; the optimizer and LR schedule "
                              "come from the recipe). Fix: give values, or remove those keys.")
    return config


def _auto_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _auto_keys(value, f"{prefix}{key}.")
    elif node == "auto":
        yield prefix.rstrip(".")


class DeepSpeed(DeepSpeedStrategy):
    """DeepSpeed ZeRO stage 1, 2 or 3 with optional CPU offload of optimizer states and parameters (CUDA only).

    Either the arguments below build the DeepSpeed config (Lightning's defaults for everything else), or
    ``config`` names a DeepSpeed JSON file (or gives its content); its ``"auto"`` values are filled from the recipe
    (see ``resolve_auto_values``), so LLaMA-Factory's ``ds_z*_config.json`` files work as they are. Under ZeRO-3 the
    model is built partitioned (``deepspeed.zero.Init``; transformers loads pre-trained weights into the partitions
    through its ``HfDeepSpeedConfig``), and rank 0 saves the gathered weights.

    Args:
        stage: ZeRO stage: 1 (optimizer states sharded), 2 (+ gradients), 3 (+ parameters).
        offload_optimizer: Keep optimizer states in CPU memory and step on the CPU (ZeRO-Offload).
        offload_parameters: ZeRO-3 only: keep parameters in CPU memory between uses (ZeRO-Infinity on CPU).
        config: A DeepSpeed JSON file (path) or dict; when given, ``stage`` and the offload switches are read from it
            and the arguments above are ignored.
        **kwargs: Further ``lightning.pytorch.strategies.DeepSpeedStrategy`` arguments.
    """

    def __init__(
        self,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        config: Optional[Union[str, Path, dict[str, Any]]] = None,
        **kwargs: Any,
    ) -> None:
        # Problems are reported by `check_settings` (called before training): an error raised in here would reach
        # the user wrapped in jsonargparse's report of every type `trainer.strategy` accepts.
        self.missing_config = config is not None and not isinstance(config, dict) and not Path(config).is_file()
        self.config_source = "trainer.strategy.init_args.config" + (f" ({config})" if isinstance(config, (str, Path)) else "")
        super().__init__(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
                         config={} if self.missing_config else config, **kwargs)
        self.stage = stage
        self._hf_deepspeed_config: Any = None

    def check_settings(self) -> None:
        """Raise ``LitFactoryError`` for a config file that does not exist or a ZeRO stage that does not."""
        if self.missing_config:
            raise LitFactoryError(f"{self.config_source}: not a file. Fix: give the path of a DeepSpeed JSON file, "
                                  "e.g. LLaMA-Factory's examples/deepspeed/ds_z3_config.json.")
        if self.stage not in (1, 2, 3):
            raise LitFactoryError(f"trainer.strategy.init_args.stage: {self.stage} is not a ZeRO stage. Fix: use 1, "
                                  "2 or 3.")

    def _format_config(self) -> None:
        stage = self.lightning_module
        if stage is not None:
            trainer = stage.trainer
            resolved = resolve_auto_values(
                self.config,
                micro_batch_size=self._micro_batch_size(),
                accumulate_grad_batches=trainer.accumulate_grad_batches,
                world_size=self.world_size,
                gradient_clip_val=trainer.gradient_clip_val,
                precision=str(self.precision_plugin.precision),
                hidden_size=_hidden_size(stage),
                source=self.config_source,
            )
            # Lightning sets these itself from the trainer and refuses a config that already has the first.
            resolved.pop("gradient_accumulation_steps", None)
            self.config = resolved
        super()._format_config()

    def _micro_batch_size(self) -> int:
        datamodule = getattr(self.lightning_module.trainer, "datamodule", None)
        size = getattr(datamodule, "batch_size", None)
        return int(size) if isinstance(size, int) else self._auto_select_batch_size()

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        self._init_config_if_needed()
        if self.zero_stage_3:
            from transformers.integrations import HfDeepSpeedConfig

            # transformers looks this object up through a weak reference when it builds or loads a model: it then
            # creates the weights partitioned and loads pre-trained ones into the partitions; without it,
            # from_pretrained would write into the empty placeholders deepspeed.zero.Init leaves.
            self._hf_deepspeed_config = HfDeepSpeedConfig(self.config)
        with super().model_sharded_context():
            yield


def _hidden_size(stage: Any) -> Optional[int]:
    """The hidden size of the stage's model (its config is read without building the model when not built)."""
    model = getattr(stage, "model", None)
    config = getattr(model, "config", None)
    if config is None and getattr(stage, "model_args", None) is not None:
        from lit_factory.model.builder import _load_config

        config = _load_config(stage.model_args, stage.tokenizer)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "hidden_size", None)
