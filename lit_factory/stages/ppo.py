"""PPO with model-sharing RLHF: policy, reference, reward model and critic on ONE copy of the base weights.

- policy: the base + the trained LoRA adapter ``default``;
- reference: the same base with adapters disabled;
- reward: the reward-model run's adapter loaded as a second, frozen adapter ``reward`` + its value head
  (or, with ``reward_model_type: full``, a separately loaded reward model);
- critic: a value head on the policy's last hidden states.

Switching between them is ``set_adapter``/``disable_adapter`` — no weights are copied. Each training step is one
PPO iteration: roll out responses to a batch of prompts, score them, compute KL-penalised rewards and GAE, then
``ppo_epochs`` passes of clipped updates over minibatches (manual optimisation).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch

from lit_factory.data import objectives
from lit_factory.errors import LitFactoryError
from lit_factory.model.adapters import LoRA
from lit_factory.model.modes import evaluating
from lit_factory.model.value_head import (
    ValueHead,
    last_token_values,
    load_value_head,
    save_value_head,
    value_head_set_aside,
)
from lit_factory.stages.base import Stage
from lit_factory.stages.ppo_losses import (
    AdaptiveKLController,
    kl_penalised_rewards,
    generalized_advantages,
    masked_mean,
    masked_whiten,
    ppo_losses,
)

REWARD_ADAPTER = "reward"


def decoder_hidden_states(causal_lm: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Last hidden states of a causal LM's decoder, with positions counted from each row's first real token (the
    prompts are left-padded) and no vocabulary projection."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).last_hidden_state


def _same_base_model(first: str, second: str) -> bool:
    """Whether two model folders (compared by their config.json) or hub ids name the same base model."""
    configs = [Path(name) / "config.json" for name in (first, second)]
    if all(config.is_file() for config in configs):
        ignored = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}
        first_config, second_config = (
            {k: v for k, v in json.loads(config.read_text()).items() if k not in ignored} for config in configs
        )
        return first_config == second_config
    return first.rstrip("/") == second.rstrip("/")


class PPO(Stage):
    """RLHF with PPO on a single base model (policy LoRA adapter + value head; reward adapter; reference = base).

    ``trainer.max_steps`` counts PPO updates (optimizer steps): each batch of prompts makes
    ``ppo_epochs × ⌈batch_size / mini_batch_size⌉`` of them.

    Args:
        reward_model: Output folder of a reward-model run (adapter + ``value_head.safetensors``), or of a full
            reward model when ``reward_model_type`` is ``full``.
        reward_model_type: ``lora``: the reward adapter is loaded onto the policy's base (must be the same base);
            ``full``: a separate reward model is loaded (costs a second model in memory).
        ppo_epochs: Passes over each rollout batch.
        mini_batch_size: Rollouts per PPO update.
        max_new_tokens: Longest sampled response.
        temperature: Sampling temperature of the rollouts.
        top_k: Sample from the k most likely tokens only (0 = all).
        top_p: Nucleus sampling threshold (1.0 = off).
        gamma: Discount factor of GAE.
        lam: λ of GAE.
        cliprange: Policy ratio clip ε.
        cliprange_value: Value clip ε.
        vf_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus (0 = none).
        init_kl_coef: Starting KL penalty coefficient β.
        target_kl: Steer β adaptively towards this KL (nats per sequence); ``None`` keeps β fixed.
        kl_horizon: Horizon of the adaptive KL controller (samples).
        whiten_rewards: Whiten the per-token rewards of each rollout batch before GAE.
        score_clip: Clip reward-model scores to ``[-score_clip, score_clip]`` (``None`` = no clipping).
        max_grad_norm: Gradient-norm clip of each update (``None`` = no clipping).
        rollouts_logged: How many rollouts (prompt → response → reward) to log as text per step.
    """

    data_objective = objectives.Prompt

    def __init__(
        self,
        *args: Any,
        reward_model: str,
        reward_model_type: Literal["lora", "full"] = "lora",
        ppo_epochs: int = 4,
        mini_batch_size: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        gamma: float = 1.0,
        lam: float = 0.95,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        entropy_coef: float = 0.0,
        init_kl_coef: float = 0.2,
        target_kl: Optional[float] = None,
        kl_horizon: int = 10000,
        whiten_rewards: bool = False,
        score_clip: Optional[float] = None,
        max_grad_norm: Optional[float] = 1.0,
        rollouts_logged: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.finetuning, LoRA):
            raise LitFactoryError("model.init_args.finetuning: PPO (model-sharing RLHF) trains a LoRA policy. Fix: set "
                                  "model.init_args.finetuning.class_path: lit_factory.model.LoRA.")
        if not Path(reward_model).is_dir():
            raise LitFactoryError(
                f"model.init_args.reward_model: {reward_model!r} is not a folder. Fix: give the output folder of a "
                "reward-model run."
            )
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the policy adapter and the critic
        self.reward_model_path = reward_model
        self.reward_model_type = reward_model_type
        self.ppo_epochs, self.mini_batch_size = ppo_epochs, mini_batch_size
        self.rollout_sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.gamma, self.lam = gamma, lam
        self.cliprange, self.cliprange_value = cliprange, cliprange_value
        self.vf_coef, self.entropy_coef = vf_coef, entropy_coef
        self.kl_controller = AdaptiveKLController(init_kl_coef, target_kl, kl_horizon)
        self.whiten_rewards, self.score_clip = whiten_rewards, score_clip
        self.max_grad_norm = max_grad_norm
        self.rollouts_logged = rollouts_logged
        self.reward_head: Optional[ValueHead] = None
        self.separate_reward_model: Optional[torch.nn.Module] = None

    # ---- the four roles on one model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        device = next(self.model.parameters()).device
        # The critic: a value head on the policy, trained with it (inside the model, so it checkpoints and moves).
        self.model.add_module("value_head", ValueHead(self.model.config.hidden_size).to(device))
        self.reward_head = load_value_head(self.reward_model_path, device)
        self.reward_head.requires_grad_(False)
        if self.reward_model_type == "full":
            from transformers import AutoModelForCausalLM

            self.separate_reward_model = AutoModelForCausalLM.from_pretrained(self.reward_model_path).to(device)
            self.separate_reward_model.eval().requires_grad_(False)
        else:
            self._load_reward_adapter()
        if self.reward_head.summary.in_features != self.model.config.hidden_size:
            raise LitFactoryError(
                f"model.init_args.reward_model: its value head expects hidden size "
                f"{self.reward_head.summary.in_features}, the policy's base has {self.model.config.hidden_size}. "
                "Fix: train the reward model on the same base."
            )

    def _load_reward_adapter(self) -> None:
        config_file = Path(self.reward_model_path) / "adapter_config.json"
        if not config_file.is_file():
            raise LitFactoryError(
                f"model.init_args.reward_model: {str(config_file)!r} not found; a LoRA reward model's output folder "
                "has it. Fix: give that folder, or set model.init_args.reward_model_type: full."
            )
        trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
        ours = self.model_args.path
        if trained_on and ours and not _same_base_model(trained_on, ours):
            raise LitFactoryError(
                f"model.init_args.reward_model: the reward adapter was trained on {trained_on!r}, the policy's base "
                f"is {ours!r}. Fix: use the same base model."
            )
        try:
            self.model.load_adapter(self.reward_model_path, adapter_name=REWARD_ADAPTER, is_trainable=False)
        except RuntimeError as err:  # shape mismatch: another base
            raise LitFactoryError(
                f"model.init_args.reward_model: the adapter in {self.reward_model_path!r} does not fit the policy's "
                f"base model ({str(err).splitlines()[0][:160]}). Fix: train the reward model on the same base."
            ) from err
        self.model.set_adapter("default")

    @contextmanager
    def _reward_adapter(self) -> Iterator[None]:
        self.model.set_adapter(REWARD_ADAPTER, inference_mode=True)
        try:
            yield
        finally:
            self.model.set_adapter("default")  # also makes the policy adapter trainable again

    # ---- forward passes ----------------------------------------------------------------------------------------
    def policy_forward(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, entropies and values of the response tokens ``sequences[:, prompt_length:]`` (log-probs and
        entropies 0 after a response's end), at the rollouts' sampling temperature."""
        response_hidden, logprobs, entropy = self.loss_head.response_logps(
            self.model, sequences, attention_mask, prompt_length, self.rollout_sampling["temperature"])
        values = self.model.value_head(response_hidden)
        return logprobs, entropy, values

    @torch.no_grad()
    def reference_logprobs(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int):
        with self.model.disable_adapter(), evaluating(self.model):
            logprobs, _, _ = self.policy_forward(sequences, attention_mask, prompt_length)
        return logprobs

    @torch.no_grad()
    def reward_scores(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reward model's score of each whole sequence, at its last real token."""
        if self.separate_reward_model is not None:
            hidden = decoder_hidden_states(self.separate_reward_model, sequences, attention_mask)
        else:
            with self._reward_adapter(), evaluating(self.model):
                hidden = decoder_hidden_states(self.model.get_base_model(), sequences, attention_mask)
        scores = last_token_values(self.reward_head(hidden), attention_mask)
        return scores.clamp(-self.score_clip, self.score_clip) if self.score_clip is not None else scores

    # ---- rollout -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sample responses and compute everything the PPO updates need (old log-probs, values, advantages...)."""
        prompts, prompt_mask = batch["input_ids"], batch["attention_mask"]
        checkpointing = self.model.get_base_model().is_gradient_checkpointing
        if checkpointing:  # recomputation buys nothing without a backward pass; the KV cache does
            self.model.get_base_model().gradient_checkpointing_disable()
        was_training = self.model.training  # validation rollouts run in eval mode and must stay there
        self.model.eval()
        # top_k=0 and top_p=1 sample from the whole distribution, the one the log-probs below are taken from.
        sequences = self.model.generate(
            input_ids=prompts, attention_mask=prompt_mask, do_sample=True, use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **self.rollout_sampling,
        )
        self.model.train(was_training)
        if checkpointing:
            self.model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        prompt_length = prompts.size(1)
        responses = sequences[:, prompt_length:]
        # A response ends at its first eos (included); what generate wrote after it is padding.
        is_eos = responses == self.tokenizer.eos_token_id
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        response_mask = (~after_eos).long()
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)

        logprobs, _, values = self.policy_forward(sequences, attention_mask, prompt_length)
        ref_logprobs = self.reference_logprobs(sequences, attention_mask, prompt_length)
        scores = self.reward_scores(sequences, attention_mask)
        rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, response_mask.float(), self.kl_controller.value)
        if self.whiten_rewards:
            rewards = masked_whiten(rewards, response_mask.float(), shift_mean=False) * response_mask
        advantages, returns = generalized_advantages(rewards, values, response_mask.float(), self.gamma, self.lam)
        advantages = masked_whiten(advantages, response_mask.float()) * response_mask
        return dict(sequences=sequences, attention_mask=attention_mask, response_mask=response_mask.float(),
                    prompt_length=torch.tensor(prompt_length), old_logprobs=logprobs, old_values=values,
                    advantages=advantages, returns=returns, scores=scores, kl=kl)

    # ---- the objective -----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """PPO objective on a minibatch of rollouts: clipped policy loss + vf_coef·value loss − entropy_coef·entropy."""
        logprobs, entropy, values = self.policy_forward(
            batch["sequences"], batch["attention_mask"], int(batch["prompt_length"]))
        terms = ppo_losses(logprobs, batch["old_logprobs"], batch["advantages"], values, batch["old_values"],
                           batch["returns"], entropy, batch["response_mask"], self.cliprange, self.cliprange_value)
        self._last_terms = terms
        return terms.policy + self.vf_coef * terms.value - self.entropy_coef * terms.entropy

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        rollout = self.rollout(batch)
        n = rollout["sequences"].size(0)
        per_sample = {k: v for k, v in rollout.items() if v.dim() > 0 and v.size(0) == n}
        history = []
        for _ in range(self.ppo_epochs):
            for index in torch.randperm(n, device=rollout["sequences"].device).split(self.mini_batch_size):
                minibatch = {k: v[index] for k, v in per_sample.items()}
                minibatch["prompt_length"] = rollout["prompt_length"]
                loss = self.loss(minibatch)
                optimizer.zero_grad()
                self.manual_backward(loss)
                if self.max_grad_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                # Lightning counts optimizer steps, so trainer.max_steps and the schedule count PPO updates.
                self.lr_schedulers().step()
                history.append(self._last_terms)

        kl_per_sequence = rollout["kl"].sum(-1).mean()
        self.kl_controller.update(float(kl_per_sequence), n)
        mean = lambda name: torch.stack([getattr(t, name).detach() for t in history]).mean()  # noqa: E731
        self.log_dict({
            "ppo/reward": rollout["scores"].mean(),
            "ppo/kl": kl_per_sequence,
            "ppo/kl_coef": self.kl_controller.value,
            "ppo/policy_loss": mean("policy"),
            "ppo/value_loss": mean("value"),
            "ppo/clip_fraction": mean("clip_fraction"),
            "ppo/entropy": mean("entropy"),
            "ppo/response_length": rollout["response_mask"].sum(-1).mean(),
            "train/lr": optimizer.param_groups[0]["lr"],
        }, prog_bar=False, batch_size=n)
        self._log_rollouts(rollout)

    def _log_rollouts(self, rollout: dict[str, torch.Tensor]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not self.rollouts_logged or not hasattr(experiment, "add_text"):
            return
        prompt_length = int(rollout["prompt_length"])
        rows = []
        for i in range(min(self.rollouts_logged, rollout["sequences"].size(0))):
            prompt = self.tokenizer.decode(rollout["sequences"][i, :prompt_length], skip_special_tokens=True)
            response_ids = rollout["sequences"][i, prompt_length:][rollout["response_mask"][i].bool()]
            response = self.tokenizer.decode(response_ids, skip_special_tokens=True)
            rows.append(f"| {prompt!r} | {response!r} | {float(rollout['scores'][i]):.3f} |")
        table = "| prompt | response | reward |\n|---|---|---|\n" + "\n".join(rows)
        experiment.add_text("ppo/rollouts", table, self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Mean reward of sampled responses to held-out prompts."""
        rollout = self.rollout(batch)
        self.log("val/reward", rollout["scores"].mean(), batch_size=rollout["scores"].size(0))

    def on_validation_epoch_end(self) -> None:
        """No language-model validation loss here: the validation metric is the reward (``validation_step``)."""

    # ---- checkpoints and outputs -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The reward adapter is an input, not a result: keep only what trains (policy adapter + critic).
        trainable = {"model." + n for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["kl_coef"] = self.kl_controller.value

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.kl_controller.value = checkpoint.get("kl_coef", self.kl_controller.value)

    def write_outputs(self, folder: Path) -> None:
        """The policy adapter in PEFT format (the reward adapter left out), the tokenizer, and the critic's head."""
        with value_head_set_aside(self.model) as head:
            self.finetuning.save(self.model, folder, selected_adapters=["default"])
        self.tokenizer.save_pretrained(folder)
        save_value_head(head, folder)
