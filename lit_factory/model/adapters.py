"""Fine-tuning methods: which parameters train. A recipe picks one by class path, e.g.
``finetuning: {class_path: lit_factory.model.LoRA, init_args: {r: 16}}``.

Each method is a small class whose ``apply`` takes the freshly built model and returns the model to train.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from lit_factory.errors import LitFactoryError
from lit_factory.model.layers import decoder_layers

if TYPE_CHECKING:
    from torch import nn


class Finetuning:
    """Base class of the fine-tuning methods."""

    #: True when the trained weights are an adapter saved apart from the base model.
    saves_adapter: bool = False

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        """Mark what trains. ``train_embeddings``: new tokens were added, so embeddings and head must train too."""
        raise NotImplementedError

    def save(self, model: "nn.Module", folder: Path, **options: Any) -> None:
        """Write the trained weights to ``folder`` in Hugging Face format: the adapter (PEFT) or the whole model
        (safetensors). ``options`` go to ``save_pretrained`` (e.g. PEFT's ``selected_adapters``)."""
        model.save_pretrained(folder, safe_serialization=True, **options)


class Full(Finetuning):
    """Train every parameter."""

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        if getattr(model, "is_quantized", False):
            raise LitFactoryError("finetuning: a quantized model trains only adapters; use lit_factory.model.LoRA")
        model.requires_grad_(True)
        return model


class Freeze(Finetuning):
    """Train only the last decoder layers (and optionally some named modules); freeze the rest.

    Args:
        trainable_layers: How many of the last decoder layers train.
        trainable_modules: Within those layers, train only submodules with these names (e.g. ``[mlp]`` or
            ``[self_attn]``, LLaMA-Factory's ``freeze_trainable_modules``); default: the whole layers.
        extra_modules: Names of further modules that train fully (e.g. ``embed_tokens``, ``lm_head``, ``norm``);
            matched against the last component(s) of module names.
    """

    def __init__(
        self,
        trainable_layers: int = 2,
        trainable_modules: Optional[list[str]] = None,
        extra_modules: Optional[list[str]] = None,
    ) -> None:
        if trainable_layers < 1:
            raise LitFactoryError("finetuning.trainable_layers: must be at least 1")
        self.trainable_layers = trainable_layers
        self.trainable_modules = list(trainable_modules or [])
        self.extra_modules = list(extra_modules or [])

    def trainable_layer_indices(self, num_layers: int) -> list[int]:
        """Indices of the decoder layers that train."""
        if self.trainable_layers > num_layers:
            raise LitFactoryError(
                f"finetuning.trainable_layers: {self.trainable_layers} is more than the model's {num_layers} layers"
            )
        return list(range(num_layers - self.trainable_layers, num_layers))

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        if getattr(model, "is_quantized", False):
            raise LitFactoryError("finetuning: a quantized model trains only adapters; use lit_factory.model.LoRA")
        prefix, layers = decoder_layers(model)
        model.requires_grad_(False)
        for index in self.trainable_layer_indices(len(layers)):
            if not self.trainable_modules:
                layers[index].requires_grad_(True)
                continue
            matched = [m for name, m in layers[index].named_modules()
                       if name and name.rsplit(".", 1)[-1] in self.trainable_modules]
            if not matched:
                raise LitFactoryError(f"finetuning.trainable_modules: no module named {self.trainable_modules} in a layer")
            for module in matched:
                module.requires_grad_(True)
        extra = list(self.extra_modules)
        if train_embeddings:
            extra += [_module_name(model, model.get_input_embeddings()), _module_name(model, model.get_output_embeddings())]
        names = dict(model.named_modules())
        for wanted in extra:
            matches = [name for name in names if name == wanted or name.endswith("." + wanted)]
            if not matches:
                raise LitFactoryError(f"finetuning.extra_modules: the model has no module named {wanted!r}")
            for name in matches:
                names[name].requires_grad_(True)
        return model


def _module_name(model: "nn.Module", target: "nn.Module") -> str:
    return next(name for name, module in model.named_modules() if module is target)


class LlamaPro(Freeze):
    """LLaMA Pro (Wu et al., 2024): train only the blocks that ``lit-factory expand`` inserted, freeze the rest.

    Args:
        num_expanded_blocks: How many blocks ``lit-factory expand --num-expand N`` added (the model's layer count
            must be a multiple of N + the original count, as expand writes it).
        trainable_modules: As in ``Freeze``.
        extra_modules: As in ``Freeze``.
    """

    def __init__(
        self,
        num_expanded_blocks: int = 8,
        trainable_modules: Optional[list[str]] = None,
        extra_modules: Optional[list[str]] = None,
    ) -> None:
        super().__init__(num_expanded_blocks, trainable_modules, extra_modules)
        self.num_expanded_blocks = num_expanded_blocks

    def trainable_layer_indices(self, num_layers: int) -> list[int]:
        from lit_factory.model.expand import expanded_layer_indices

        return expanded_layer_indices(num_layers, self.num_expanded_blocks)


class LoRA(Finetuning):
    """Low-rank adapters through PEFT, with the variants of the LoRA family as options.

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator: the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: Dropout on the adapter input.
        target_modules: ``all`` for every linear layer except the output head (and a VLM's vision tower), or a
            list of module names (e.g. ``[q_proj, v_proj]``) or a regular expression.
        modules_to_save: Modules trained fully and saved beside the adapter (e.g. ``[embed_tokens, lm_head]``;
            LLaMA-Factory's ``additional_target``).
        use_rslora: Rank-stabilised LoRA (Kalajdzievski, 2023): scale by ``alpha / sqrt(r)``.
        use_dora: DoRA (Liu et al., 2024): learn a magnitude vector and a LoRA-updated direction.
        init: Adapter initialisation: ``default`` (B = 0, A Kaiming), ``gaussian``, ``pissa`` (principal singular
            vectors of W by full SVD; the base keeps the residual), ``pissa_niter_<n>`` (fast randomised SVD),
            ``olora``. PiSSA/OLoRA adapters are saved converted so that they apply to the original base model.
    """

    saves_adapter = True

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Union[str, list[str]] = "all",
        modules_to_save: Optional[list[str]] = None,
        use_rslora: bool = False,
        use_dora: bool = False,
        init: str = "default",
    ) -> None:
        if r < 1:
            raise LitFactoryError("finetuning.r: the LoRA rank must be at least 1")
        if not re.fullmatch(r"default|gaussian|pissa|pissa_niter_\d+|olora", init):
            raise LitFactoryError(
                f"finetuning.init: {init!r} is not one of default, gaussian, pissa, pissa_niter_<n>, olora"
            )
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.modules_to_save = list(modules_to_save or [])
        self.use_rslora = use_rslora
        self.use_dora = use_dora
        self.init = init
        self._initial_adapter: Optional[str] = None  # PiSSA/OLoRA: the adapter as initialised (see `save`)

    @property
    def rewrites_base(self) -> bool:
        """PiSSA/OLoRA move the adapter's share of W out of the base weights."""
        return self.init.startswith(("pissa", "olora"))

    def peft_config(self, model: "nn.Module", train_embeddings: bool = False):
        """The ``peft.LoraConfig`` this method applies to ``model``."""
        from peft import LoraConfig, TaskType

        # PEFT's parameter wrapper (fused MoE experts) supports neither dropout, DoRA nor a rewritten base.
        plain = not (self.dropout or self.use_dora or self.rewrites_base)
        targets, parameters = _resolve_targets(model, self.target_modules, with_parameters=plain)
        if not plain and self.target_modules == "all":
            from lightning.pytorch.utilities import rank_zero_warn

            from lit_factory.model.targets import expert_count

            if expert_count(model):
                rank_zero_warn("finetuning: with LoRA dropout, DoRA or PiSSA/OLoRA, PEFT cannot adapt fused MoE "
                               "expert weights; only the attention and dense layers get adapters")
        to_save = _modules_to_save(model, self.modules_to_save, train_embeddings)
        if self.target_modules == "all":
            # A VLM's projector left trainable (freeze_multi_modal_projector: false) trains fully, saved beside.
            to_save += [name for name in _vision_exclusions(model)[1] if name not in to_save]
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            target_parameters=parameters or None,
            modules_to_save=to_save or None,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=True if self.init == "default" else self.init,
            # A tied model's head IS its embedding: PEFT must train one copy (and save it once) or the two drift
            # apart. Only set when it applies; PEFT warns on untied models or untouched embeddings.
            ensure_weight_tying=_trains_tied_embeddings(model, to_save, self.target_modules),
        )

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        from peft import get_peft_model

        if self.rewrites_base and getattr(model, "is_quantized", False):
            raise LitFactoryError(f"finetuning.init: {self.init} rewrites the base weights; it cannot run on a quantized model")
        model = get_peft_model(model, self.peft_config(model, train_embeddings))
        if self.rewrites_base:
            self._initial_adapter = _save_initial_adapter(model)
        return model

    def save(self, model: "nn.Module", folder: Path, **options: Any) -> None:
        """PiSSA/OLoRA adapters are saved converted so that they apply to the ORIGINAL base weights: PEFT does the
        conversion (rank 2r: [A; A0], [B, -B0]) when given the adapter as initialised."""
        if self._initial_adapter is not None:
            options["path_initial_model_for_weight_conversion"] = self._initial_adapter
        super().save(model, folder, **options)


class OFT(Finetuning):
    """Orthogonal fine-tuning through PEFT's ``OFTConfig`` (Qiu et al., 2023; Liu et al., 2024 for the BOFT blocks):
    each target layer's input is rotated by a learned block-diagonal orthogonal matrix, which keeps the angles
    between the pretrained weights' neurons. LLaMA-Factory's ``finetuning_type: oft``; saved in PEFT format.

    Args:
        block_size: Size of the orthogonal blocks; must divide every target layer's input size. Set either this
            or ``r`` (PEFT infers the other: ``r * block_size`` = the layer's input size).
        r: Number of orthogonal blocks per layer (0: infer it from ``block_size``).
        target_modules: As in ``LoRA``: ``all`` (linear layers but the head, a VLM's vision side and MoE routers;
            fused MoE experts are not adapted, PEFT's OFT has no parameter targets), names or a regex.
        module_dropout: Probability of replacing an orthogonal block by the identity during training.
        modules_to_save: Modules trained fully and saved beside the adapter.
        use_cayley_neumann: Approximate the Cayley transform's inverse by a Neumann series (PEFT's default, faster);
            ``false`` computes the exact inverse.
    """

    saves_adapter = True

    def __init__(
        self,
        block_size: int = 32,
        r: int = 0,
        target_modules: Union[str, list[str]] = "all",
        module_dropout: float = 0.0,
        modules_to_save: Optional[list[str]] = None,
        use_cayley_neumann: bool = True,
    ) -> None:
        if (block_size > 0) == (r > 0):
            raise LitFactoryError("finetuning: OFT takes either block_size or r (the other is inferred); set the "
                                  "other to 0")
        self.block_size = block_size
        self.r = r
        self.target_modules = target_modules
        self.module_dropout = module_dropout
        self.modules_to_save = list(modules_to_save or [])
        self.use_cayley_neumann = use_cayley_neumann

    def peft_config(self, model: "nn.Module", train_embeddings: bool = False):
        """The ``peft.OFTConfig`` this method applies to ``model``."""
        from peft import OFTConfig, TaskType

        targets, _ = _resolve_targets(model, self.target_modules, with_parameters=False)
        to_save = _modules_to_save(model, self.modules_to_save, train_embeddings)
        if self.block_size:
            from torch import nn

            by_name = dict(model.named_modules())
            chosen = [n for n, m in by_name.items() if isinstance(m, nn.Linear) and _matches(n, targets)]
            uneven = sorted({n.rsplit(".", 1)[-1] for n in chosen
                             if getattr(by_name[n], "in_features", 0) % self.block_size})
            if uneven:
                raise LitFactoryError(f"finetuning.block_size: {self.block_size} does not divide the input size of "
                                      f"{uneven}; choose a divisor or name other target_modules")
        return OFTConfig(
            task_type=TaskType.CAUSAL_LM,
            r=self.r,
            oft_block_size=self.block_size,
            target_modules=targets,
            module_dropout=self.module_dropout,
            modules_to_save=to_save or None,
            use_cayley_neumann=self.use_cayley_neumann,
        )

    def apply(self, model: "nn.Module", train_embeddings: bool = False) -> "nn.Module":
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, train_embeddings))


def _modules_to_save(model: "nn.Module", names: list[str], train_embeddings: bool) -> list[str]:
    """The modules an adapter trains fully and saves beside itself: ``names``, plus the embeddings and head when
    new tokens were added (their rows are untrained: without training the embeddings and head they stay noise)."""
    to_save = list(names)
    if train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            name = _module_name(model, module).rsplit(".", 1)[-1]
            if name not in to_save:
                to_save.append(name)
    return to_save


def _matches(name: str, targets: Union[str, list[str]]) -> bool:
    """PEFT's rule for a module name against ``target_modules``: a regex matches it fully, a list by suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _resolve_targets(model: "nn.Module", target_modules: Union[str, list[str]],
                     with_parameters: bool) -> tuple[Union[str, list[str]], list[str]]:
    """``(target_modules, target_parameters)`` for PEFT: ``all`` resolved by ``lit_factory.model.targets``
    (linear layers but head, vision side and MoE routers; fused experts as parameters), a list checked against
    the model's module names, a regular expression checked to match something."""
    from lit_factory.model.targets import adapter_targets

    if target_modules == "all":
        modules, parameters = adapter_targets(model, _vision_exclusions(model)[0], with_parameters)
        if not modules and not parameters:
            raise LitFactoryError(f"finetuning.target_modules: `all` finds no linear layer in {type(model).__name__}")
        return modules, parameters
    if isinstance(target_modules, list):
        leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in target_modules if t not in leaf_names]
        if missing:
            raise LitFactoryError(f"finetuning.target_modules: the model has no modules named {missing}")
    elif not any(re.fullmatch(target_modules, name) for name, _ in model.named_modules()):
        raise LitFactoryError(f"finetuning.target_modules: the pattern {target_modules!r} matches no module")
    return target_modules, []


def _trains_tied_embeddings(model: "nn.Module", to_save: list[str], targets: Union[str, list[str]]) -> bool:
    """Whether the model ties its output head to its input embeddings and the adapter touches either of them."""
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if head is None or head.weight is not embeddings.weight:
        return False
    names = {_module_name(model, module).rsplit(".", 1)[-1] for module in (embeddings, head)}
    touched = set(to_save) | (set(targets) if isinstance(targets, list) else set())
    return bool(names & touched)


def _vision_exclusions(model: "nn.Module") -> tuple[Optional[str], list[str]]:
    """For ``all`` on a VLM, as LLaMA-Factory: a regex over the modules LoRA leaves out (the projector, and the
    vision tower when the builder froze it), and the projector's name when it was left trainable
    (``freeze_multi_modal_projector: false``): it then trains fully and is saved beside the adapter."""
    from lit_factory.model.patches import vision_module_prefixes, vision_parameters

    towers = vision_module_prefixes(model, projector=False)
    projectors = vision_module_prefixes(model, tower=False)
    tower_params, projector_params = vision_parameters(model)
    excluded = projectors + ([] if any(p.requires_grad for p in tower_params) else towers)
    regex = rf"(.*\.)?({'|'.join(map(re.escape, excluded))})\..*" if excluded else None
    trainable = sorted({name.rsplit(".", 1)[-1] for name in projectors}) if any(
        p.requires_grad for p in projector_params) else []
    return regex, trainable


def _save_initial_adapter(model: "nn.Module") -> str:
    """Save a PiSSA/OLoRA adapter as initialised (as plain LoRA, PEFT's recipe) to a temporary folder; returns it."""
    import tempfile

    config = model.peft_config["default"]
    initial_dir = tempfile.mkdtemp(prefix="lit-factory-initial-adapter-")
    init, config.init_lora_weights = config.init_lora_weights, True
    model.save_pretrained(initial_dir)
    config.init_lora_weights = init
    return initial_dir
