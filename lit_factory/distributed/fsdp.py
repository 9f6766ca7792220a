"""FSDP2 (torch's ``fully_shard``) for Hugging Face models through Lightning's ``ModelParallelStrategy``: each
decoder layer is one sharding unit, and only global rank 0 reads the weights.

Why not Lightning's ``FSDPStrategy``: it drives FSDP1, which torch 2.13 refuses on CPU ("FSDP needs a non-CPU
accelerator device") and deprecates; ``fully_shard`` runs on CUDA and on CPU with gloo. ``ModelParallelStrategy``
leaves applying ``fully_shard`` to the module — this class does it for every stage, so stages stay unaware of it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_factory.errors import LitFactoryError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.nn import Module


def decoder_layer_classes(model: "Module", names: Optional[list[str]] = None) -> tuple[type, ...]:
    """The module classes sharded one by one: those named in ``names``, else the model's ``_no_split_modules``
    (what transformers and accelerate treat as the unit that stays on one device: the decoder layer)."""
    if names is None:
        names = list(getattr(model, "_no_split_modules", None) or [])
    classes = tuple({type(module) for module in model.modules() if type(module).__name__ in set(names)})
    if not classes:
        raise LitFactoryError(
            f"trainer.strategy.init_args.wrap_classes: the model has no module class named {names or '(none)'}. "
            "Fix: name its decoder layer class, e.g. [Qwen2DecoderLayer]."
        )
    return classes


class FSDP(ModelParallelStrategy):
    """Fully Sharded Data Parallel (FSDP2): parameters, gradients and optimizer states sharded over all ranks.

    At setup every decoder layer of the stage's model (and of a reference model copy) becomes one ``fully_shard``
    unit, then the whole model one more (embeddings, final norm, head) — accelerate's ``TRANSFORMER_BASED_WRAP``.
    FSDP2 shards each parameter on its own, so LoRA's trainable and frozen weights share a layer without
    ``use_orig_params`` tricks, and optimizer groups see the original parameters.

    Args:
        wrap_classes: Class names of the modules sharded as units; default: the model's ``_no_split_modules`` (its
            decoder layer, e.g. ``Qwen2DecoderLayer``).
        rank_zero_loads_weights: Only global rank 0 reads the model's weights; the other ranks build it on the meta
            device (no memory) and receive rank 0's weights by broadcast once it is sharded (accelerate's
            ``cpu_ram_efficient_loading``). Quantized models and adapters to resume are read by every rank.
        reshard_after_forward: Free each unit's gathered weights after its forward (ZeRO-3-like, least memory);
            false keeps them until the backward (ZeRO-2-like, less communication). The trained model's root unit
            (embeddings, final norm, head) stays gathered from its forward to its backward either way, FSDP2's
            default for a root: its backward starts at once, and the loss head (``ChunkedLogits``) projects through
            it after the forward. A frozen reference copy follows this setting throughout.
        save_distributed_checkpoint: Lightning checkpoints (``.ckpt``) as one folder of shards per rank (fast,
            resumable with the same world size); false gathers one file on rank 0. The Hugging Face output folder
            is always gathered whole.
        **kwargs: Further ``lightning.pytorch.strategies.ModelParallelStrategy`` arguments (``process_group_backend``,
            ``timeout``).
    """

    def __init__(
        self,
        wrap_classes: Optional[list[str]] = None,
        rank_zero_loads_weights: bool = True,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.wrap_classes = wrap_classes
        self.rank_zero_loads_weights = rank_zero_loads_weights
        self.reshard_after_forward = reshard_after_forward

    def builds_empty_model(self) -> bool:
        """Whether this process builds the model without weights (on the meta device) and waits for rank 0's
        (``build_model`` still reads them where it needs them: a quantized model, an adapter to load)."""
        return self.rank_zero_loads_weights and self.global_rank > 0 and self.world_size > 1

    def setup_environment(self) -> None:
        # One data-parallel dimension over every process (Lightning's "auto" would make it the node count and put
        # the processes of a node into tensor parallelism).
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer: "pl.Trainer") -> None:
        from torch.distributed.fsdp import fully_shard

        stage = self.lightning_module
        mesh = self.device_mesh["data_parallel"]
        for module in _sharded_modules(stage):
            # Rank 0 keeps its whole weights (and buffers, which FSDP does not shard) to broadcast after sharding.
            whole = module.state_dict() if self.global_rank == 0 else {}
            layer_classes = decoder_layer_classes(module, self.wrap_classes)
            for layer in [m for m in module.modules() if isinstance(m, layer_classes)]:
                fully_shard(layer, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
            trained_root = module is getattr(stage, "model", None) and self.reshard_after_forward
            # None: FSDP2's own choice, True for the units inside and False for the root.
            fully_shard(module, mesh=mesh, reshard_after_forward=None if trained_root else self.reshard_after_forward)
            if self.world_size > 1 and self._has_meta_tensors_anywhere(module):
                self._receive_rank_zero_weights(module, whole)
        super().setup(trainer)

    def _has_meta_tensors_anywhere(self, module: "Module") -> bool:
        local = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
        flag = torch.tensor(int(local), device=self.root_device)
        torch.distributed.all_reduce(flag)  # every rank must join the broadcast if any rank built empty
        return bool(flag.item())

    def _receive_rank_zero_weights(self, module: "Module", whole: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if self.global_rank > 0:
            module.to_empty(device=self.root_device)
        set_model_state_dict(module, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for buffer in module.buffers():  # non-persistent buffers (rotary frequencies) are not in the state dict
            torch.distributed.broadcast(buffer, src=0)

    @contextmanager
    def whole_weights(self, module: "Module") -> Iterator[None]:
        """Inside this context rank 0's ``module`` holds plain whole tensors instead of its shards (every rank must
        enter: it gathers), so the stage's ``write_outputs`` saves what a one-device run saves."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        whole = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.global_rank != 0:
            yield
            return
        swapped: list[tuple["Module", str, torch.nn.Parameter]] = []
        replacements: dict[int, torch.nn.Parameter] = {}
        owners = {id(m): m for m in module.modules()}
        names = {id(p): n for n, p in module.named_parameters()}  # first name of each (tied) parameter
        for owner in list(owners.values()):
            for leaf, parameter in list(owner._parameters.items()):
                if parameter is None:
                    continue
                if id(parameter) not in replacements:
                    replacements[id(parameter)] = torch.nn.Parameter(whole[names[id(parameter)]],
                                                                     requires_grad=parameter.requires_grad)
                swapped.append((owner, leaf, parameter))
                owner._parameters[leaf] = replacements[id(parameter)]
        try:
            yield
        finally:
            for owner, leaf, parameter in swapped:
                owner._parameters[leaf] = parameter


def _sharded_modules(stage: Any) -> list["Module"]:
    """The stage's models that hold weights to shard: the trained one and a frozen reference copy, if any."""
    modules = [getattr(stage, "model", None), getattr(stage, "reference_model", None)]
    return [module for module in modules if isinstance(module, torch.nn.Module)]
