"""Hyperparameters of every trainer: the `hyperparameters` of a job spec (torch-free).

Defaults follow the papers (DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290; reward
models and PPO: Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, and Ziegler et al. 2019,
https://arxiv.org/abs/1909.08593; GRPO: Shao et al. 2024, https://arxiv.org/abs/2402.03300) and
TRL where the papers are silent. Every field carries its bounds and a description, which Swagger shows.

**Batches of the online-RL trainers (PPO, GRPO).** A rollout samples completions for
`rollout_batch_size` prompts (GRPO: `num_generations` each). The rollout's completions are cut into
minibatches of `batch_size` completions, and each minibatch is one optimizer step, its gradient
accumulated over `gradient_accumulation_steps` micro-batches. A rollout therefore gives
``ppo_epochs`` (PPO) or ``num_iterations`` (GRPO) times ``num_minibatches`` optimizer steps, and
`max_steps` counts those steps.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


def check_whole_minibatches(completions: int, batch_size: int | None, what: str) -> None:
    """Refuse a rollout whose completions do not split into whole minibatches of `batch_size`.

    Args:
        completions: completions sampled per rollout.
        batch_size: completions per optimizer step; None when it failed its own validation.
        what: how the message names the rollout's size, e.g. ``"rollout_batch_size (6)"``.

    Raises:
        ValueError: `completions` is not a multiple of `batch_size`.
    """
    if batch_size is not None and completions % batch_size:
        raise ValueError(f"{what} must split into whole minibatches of batch_size ({batch_size})")


class LoopHyperparameters(BaseModel):
    """What every trainer's optimisation loop takes: schedule, batching, clipping, cadence."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak AdamW learning rate.")
    batch_size: int = Field(
        8, ge=1, le=1024, description="Examples (pairs) per optimizer step, split across gradient accumulation."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step; trades speed for memory, not results."
    )
    n_epochs: int = Field(1, ge=1, le=100, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Optimizer steps to run; overrides n_epochs when set (the data is cycled).",
    )
    max_length: int = Field(
        512, ge=8, le=32768, description="Most tokens of prompt plus response; responses are cut on the right to fit."
    )
    max_prompt_length: int = Field(
        256, ge=1, le=32768, validate_default=True,
        description="Most prompt tokens; longer prompts keep their last tokens. Must be < max_length.",
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Steps of linear learning-rate warmup; the rate is constant afterwards."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(
        1.0, gt=0, le=1e6, description="Gradients are clipped to this global L2 norm before each step."
    )
    checkpoint_every: int = Field(
        100, ge=1, le=1_000_000,
        description="Save a checkpoint every this many optimizer steps; one is always saved at the end.",
    )
    log_every: int = Field(1, ge=1, le=1_000_000, description="Report metrics every this many steps.")
    eval_every: int | None = Field(
        None, ge=1, le=1_000_000,
        description="With an eval dataset: evaluate every this many steps (and always at checkpoints and the end).",
    )
    disable_dropout: bool = Field(
        True,
        description="Turn off the dropout of every model the trainer loads (policy, reward model, critic), "
                    "as TRL does, so the first step has its analytic values (DPO loss ln 2, zero KL, PPO "
                    "ratio 1); false keeps the architecture's dropout while training. LoRA's own "
                    "lora.dropout is kept either way. Saved checkpoints keep the architecture's dropout.",
    )

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Number format of the forward passes: 'bf16'/'fp16' run them under autocast in that "
                    "type while master weights and AdamW state stay fp32 (fp16 with a loss scaler); "
                    "'auto' is bf16 on a CUDA GPU that supports it and fp32 on the CPU.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them: less memory "
                    "for about a third more compute (the policy, reward model and critic being trained).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel of the loaded models: 'auto' is flash_attention_2 when the flash_attn "
                    "package is installed and training runs on CUDA, else sdpa.",
    )

    @field_validator("max_prompt_length")
    @classmethod
    def _prompt_shorter_than_total(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not a model validator) so the error's location is this field.
        max_length = info.data.get("max_length")
        if max_length is not None and value >= max_length:
            raise ValueError(
                f"max_prompt_length ({value}) must be less than max_length ({max_length}), "
                "so every response keeps at least one token"
            )
        return value


class DPOHyperparameters(LoopHyperparameters):
    """Hyperparameters of Direct Preference Optimization."""

    learning_rate: float = Field(
        1e-6, gt=0, le=1, description="Peak AdamW learning rate (DPO paper: 1e-6; a tiny model needs ~3e-3)."
    )
    beta: float = Field(
        0.1, gt=0, le=100,
        description="β: strength of the implicit KL penalty towards the reference model (DPO paper: 0.1).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description="'sigmoid': −log σ(βh) (DPO eq. 7; with label_smoothing > 0 it is cDPO); "
                    "'ipo': (h/len − 1/(2β))² on length-averaged log-probs (Azar et al. 2023); "
                    "'hinge': relu(1 − βh) (SLiC, Zhao et al. 2023).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="ε of conservative DPO: the probability that a preference label is flipped "
                    "(−(1−ε)·log σ(βh) − ε·log σ(−βh)); 'sigmoid' loss only.",
    )
    precompute_ref_logprobs: bool = Field(
        True,
        description="Compute the reference log-probs in one pass before training, so the reference "
                    "model is not in memory while training. Results equal the on-the-fly path.",
    )

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_needs_sigmoid(cls, value: float, info: ValidationInfo) -> float:
        loss_type = info.data.get("loss_type")
        if value > 0 and loss_type not in (None, "sigmoid"):
            raise ValueError(f"label_smoothing applies to the 'sigmoid' loss only, not {loss_type!r}")
        return value


class RewardModelHyperparameters(LoopHyperparameters):
    """Hyperparameters of a Bradley–Terry reward model.

    A row may carry a numeric ``margin`` (how much better chosen is): the loss becomes
    −log σ(r_c − r_r − m), as in Llama 2 (Touvron et al. 2023, §3.2.2).
    """

    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak AdamW learning rate (InstructGPT RM: 9e-6).")
    center_rewards_coefficient: float = Field(
        0.0, ge=0, le=10,
        description="η of the auxiliary loss η·mean((r_c + r_r)²) that keeps rewards centred on zero "
                    "(Eisenstein et al. 2023 suggest 0.01); 0 turns it off.",
    )
    reward_stats_rows: int = Field(
        2048, ge=1, le=1_000_000,
        description="Training pairs (a fixed sample) scored at each checkpoint to record the reward "
                    "mean and std that PPO/GRPO use to normalise this model's rewards.",
    )


class RLHyperparameters(LoopHyperparameters):
    """What PPO and GRPO share: sampling, rollout size, and how a rollout becomes optimizer steps.

    See the module docstring for the batch semantics: `batch_size` completions make one optimizer
    step, and a rollout's completions are split into such minibatches.
    """

    learning_rate: float = Field(
        1e-6, gt=0, le=1,
        description="Peak AdamW learning rate of the policy (DeepSeekMath's GRPO: 1e-6; tiny-llama learns at 1e-2).",
    )
    batch_size: int = Field(
        8, ge=1, le=65536,
        description="Completions per optimizer step (one minibatch of a rollout), split across "
                    "gradient_accumulation_steps micro-batches.",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=32768, validate_default=True,
        description="Most tokens sampled per completion, EOS included; max_prompt_length + max_new_tokens "
                    "must fit in max_length.",
    )
    temperature: float = Field(
        1.0, gt=0, le=10,
        description="τ: sampling logits are divided by it, and so are the logits of every later pass "
                    "(old policy, reference, training), so all of them score the distribution that was sampled.",
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: sample from the most probable tokens holding this mass."
    )
    rollout_batch_size: int = Field(
        8, ge=1, le=65536, description="Prompts sampled per rollout (GRPO: num_generations completions for each)."
    )
    missing_eos_penalty: float | None = Field(
        None, ge=0, le=1e6,
        description="Subtracted from the reward of a completion cut at max_new_tokens without EOS, so the "
                    "policy learns to finish (as TRL's missing_eos_penalty); null: no penalty.",
    )

    @field_validator("max_new_tokens")
    @classmethod
    def _prompt_and_completion_fit(cls, value: int, info: ValidationInfo) -> int:
        max_length, max_prompt = info.data.get("max_length"), info.data.get("max_prompt_length")
        if max_length is not None and max_prompt is not None and max_prompt + value > max_length:
            raise ValueError(
                f"max_prompt_length ({max_prompt}) + max_new_tokens ({value}) must not exceed max_length ({max_length})"
            )
        return value

    @property
    def completions_per_rollout(self) -> int:
        """Completions sampled per rollout."""
        return self.rollout_batch_size

    @property
    def num_minibatches(self) -> int:
        """Optimizer steps per pass over a rollout: ``completions_per_rollout / batch_size``."""
        return self.completions_per_rollout // self.batch_size


class GRPOHyperparameters(RLHyperparameters):
    """Hyperparameters of Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1).

    Defaults: on-policy, one optimizer step per rollout (8 prompts × 8 completions = batch_size 64,
    μ = 1), as in DeepSeekMath's single update per exploration stage; the loss is then the plain
    policy gradient with a k3 KL penalty, since the ratio is 1.
    """

    batch_size: int = Field(
        64, ge=1, le=65536,
        description="Completions per optimizer step (one minibatch of a rollout), split across "
                    "gradient_accumulation_steps micro-batches; rollout_batch_size × num_generations "
                    "must be a multiple of it.",
    )
    num_generations: int = Field(
        8, ge=2, le=1024, validate_default=True,
        description="G: completions sampled per prompt, whose rewards are compared with each other "
                    "(TRL's default; DeepSeekMath used 64).",
    )
    scale_rewards: bool = Field(
        True,
        description="Divide each completion's advantage by its group's reward std (GRPO); false keeps "
                    "r − mean only (Dr. GRPO, Liu et al. 2025), which does not up-weight too easy or too hard prompts.",
    )
    epsilon_low: float = Field(
        0.2, ge=0, lt=1, description="ε_low: the probability ratio is clipped below at 1 − ε_low (PPO/GRPO: 0.2)."
    )
    epsilon_high: float = Field(
        0.2, ge=0, le=10,
        description="ε_high: the ratio is clipped above at 1 + ε_high; 0.28 is DAPO's clip-higher "
                    "(Yu et al. 2025), which leaves room for unlikely tokens to grow.",
    )
    beta: float = Field(
        0.04, ge=0, le=100,
        description="β: weight of the k3 KL penalty towards the reference (initial) policy, added to the "
                    "per-token loss (DeepSeekMath: 0.04); 0 loads no reference model at all.",
    )
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="How per-token losses become the step's loss: 'token' averages over every token of the "
                    "step (DAPO; TRL's default), so long completions are not down-weighted; 'sequence' "
                    "averages each completion over its tokens, then over completions (the GRPO paper); "
                    "'constant' divides the sum by completions × a constant (Dr. GRPO). Always over the whole "
                    "optimizer step, so micro-batching does not change the gradient.",
    )
    num_iterations: int = Field(
        1, ge=1, le=64,
        description="μ: passes of clipped updates over each rollout (DeepSeekMath: 1). Above 1, old "
                    "log-probs are recomputed after sampling and the clip matters.",
    )
    max_completion_tokens_constant: int | None = Field(
        None, ge=1, le=1_000_000,
        description="The constant of the 'constant' aggregation (tokens per completion); null uses max_new_tokens.",
    )

    @property
    def completions_per_rollout(self) -> int:
        """Completions sampled per rollout: ``rollout_batch_size × num_generations``."""
        return self.rollout_batch_size * self.num_generations

    @field_validator("num_generations")
    @classmethod
    def _whole_minibatches(cls, value: int, info: ValidationInfo) -> int:
        prompts = info.data.get("rollout_batch_size")
        if prompts is not None:
            completions = prompts * value
            check_whole_minibatches(
                completions, info.data.get("batch_size"),
                f"rollout_batch_size ({prompts}) × num_generations ({value}) = {completions} completions",
            )
        return value


class PPOHyperparameters(RLHyperparameters):
    """Hyperparameters of PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022).

    A rollout samples one completion per prompt; its completions are split into `num_minibatches`
    minibatches of `batch_size`, and `ppo_epochs` passes over them (shuffled) make the updates.
    """

    rollout_batch_size: int = Field(
        32, ge=1, le=65536, validate_default=True,
        description="Prompts (and so completions) per rollout; must be a multiple of batch_size, "
                    "the quotient being the number of minibatches.",
    )
    kl_coef: float = Field(
        0.05, ge=0, le=100,
        description="β: per-token KL penalty −β·(log π_old − log π_ref) added to the rewards (TRL's default; "
                    "InstructGPT: 0.02); with adaptive_kl, its starting value.",
    )
    adaptive_kl: bool = Field(
        False, description="Steer β towards target_kl by proportional control (Ziegler et al. 2019, §2.2)."
    )
    target_kl: float = Field(
        6.0, gt=0, le=1000, description="With adaptive_kl: the sequence KL in nats to hold (Ziegler et al.: 6)."
    )
    kl_horizon: int = Field(
        10_000, ge=1, le=100_000_000,
        description="With adaptive_kl: completions over which β makes a full 20% correction (Ziegler et al.: 10,000).",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="γ: discount per token (1.0 for language models).")
    lam: float = Field(0.95, ge=0, le=1, description="λ of generalized advantage estimation (Schulman et al. 2016).")
    cliprange: float = Field(0.2, gt=0, lt=1, description="ε: the probability ratio is clipped to [1 − ε, 1 + ε].")
    cliprange_value: float = Field(
        0.2, gt=0, le=1e6, description="ε_v: a value prediction may move at most this far from its rollout value."
    )
    vf_coef: float = Field(
        0.1, ge=0, le=100,
        description="Weight of the value loss in the step's loss (TRL's default). The critic has its own "
                    "optimizer, so the weight scales its gradients before clipping and its reported loss.",
    )
    ppo_epochs: int = Field(4, ge=1, le=64, description="K: passes of updates over each rollout (TRL: 4).")
    whiten_advantages: bool = Field(
        True, description="Normalise advantages to mean 0 and std 1 over the rollout's tokens."
    )
    entropy_coef: float = Field(
        0.0, ge=0, le=10, description="Weight of an entropy bonus in the policy loss; 0 (off) as in TRL."
    )
    ptx_coef: float = Field(
        0.0, ge=0, le=1000,
        description="γ of PPO-ptx (Ouyang et al. 2022, eq. 2): weight of a language-modelling loss on the "
                    "job's text rows, mixed into every update; 0 turns it off.",
    )
    reward_clip: float | None = Field(
        None, gt=0, le=1e6, description="Bound each completion's score to [−reward_clip, reward_clip]; null: no bound."
    )
    value_model: Literal["policy", "reward_model"] = Field(
        "policy",
        description="Where the critic starts: 'policy' puts a fresh value head on a copy of the base model; "
                    "'reward_model' starts from the first model reward's checkpoint (its backbone and head), "
                    "as InstructGPT did.",
    )
    critic_learning_rate: float = Field(
        9e-6, gt=0, le=1, description="Peak AdamW learning rate of the critic (OpenRLHF's default)."
    )

    @field_validator("rollout_batch_size")
    @classmethod
    def _whole_minibatches(cls, value: int, info: ValidationInfo) -> int:
        check_whole_minibatches(value, info.data.get("batch_size"), f"rollout_batch_size ({value})")
        return value
