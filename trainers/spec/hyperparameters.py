"""Hyperparameters of every trainer: the `hyperparameters` of a job spec (torch-free).

Defaults follow the papers (DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290; reward
models and PPO: Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, and Ziegler et al. 2019,
https://arxiv.org/abs/1909.08593; GRPO: Shao et al. 2024, https://arxiv.org/abs/2402.03300; SimPO: Meng et al.
2024, https://arxiv.org/abs/2405.14734; ORPO: Hong et al. 2024, https://arxiv.org/abs/2403.07691) and
TRL where the papers are silent. Every field carries its bounds and a description, which Swagger shows.

**Batches of the online-RL trainers (PPO, GRPO).** A rollout samples completions for
`rollout_batch_size` prompts (GRPO: `num_generations` each). The rollout's completions are cut into
minibatches of `batch_size` completions, and each minibatch is one optimizer step, its gradient
accumulated over `gradient_accumulation_steps` micro-batches. A rollout therefore gives
``ppo_epochs`` (PPO) or ``num_iterations`` (GRPO) times ``num_minibatches`` optimizer steps, and
`max_steps` counts those steps. Their classes live in `trainers.spec.rl_hyperparameters`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


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


# The preference losses that read no reference policy, and those that take label smoothing.
REFERENCE_FREE_LOSSES = ("simpo", "orpo")
SMOOTHED_LOSSES = ("sigmoid", "simpo")
# β of each preference loss when the job leaves it null: its paper's default.
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "hinge": 0.1, "simpo": 2.0, "orpo": 0.1}


class DPOHyperparameters(LoopHyperparameters):
    """Hyperparameters of Direct Preference Optimization, and of SimPO and ORPO as its reference-free losses."""

    learning_rate: float = Field(
        1e-6, gt=0, le=1, description="Peak AdamW learning rate (DPO paper: 1e-6; a tiny model needs ~3e-3)."
    )
    beta: float | None = Field(
        None, gt=0, le=100,
        description="β: for the DPO losses, the strength of the implicit KL penalty towards the reference "
                    "model; for 'simpo', the scale of the length-normalised reward; for 'orpo', λ, the weight "
                    "of the odds-ratio term (TRL's ORPOConfig.beta). null: the loss type's paper default, "
                    "0.1 for 'sigmoid', 'ipo', 'hinge' and 'orpo', 2.0 for 'simpo'; the job shows the value used.",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid",
        description="'sigmoid': −log σ(βh) (DPO eq. 7; with label_smoothing > 0 it is cDPO); "
                    "'ipo': (h/len − 1/(2β))² on length-averaged log-probs (Azar et al. 2023); "
                    "'hinge': relu(1 − βh) (SLiC, Zhao et al. 2023). Reference-free, no reference model "
                    "loaded: 'simpo': −log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ) (Meng et al. 2024); "
                    "'orpo': −log π(y_w)/|y_w| + λ·(−log σ(log odds(y_w) − log odds(y_l))) (Hong et al. 2024).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="ε of conservative DPO: the probability that a preference label is flipped "
                    "(−(1−ε)·log σ(z) − ε·log σ(−z)); 'sigmoid' and 'simpo' losses only.",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, le=100,
        description="γ: SimPO's target reward margin, subtracted inside the sigmoid (TRL's simpo_gamma: 0.5; "
                    "the SimPO paper tunes γ/β between 0.3 and 0.8); read by the 'simpo' loss only.",
    )
    precompute_ref_logprobs: bool = Field(
        True,
        description="Compute the reference log-probs in one pass before training, so the reference "
                    "model is not in memory while training. Results equal the on-the-fly path. "
                    "'simpo' and 'orpo' have no reference, so neither path runs.",
    )

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_needs_sigmoid(cls, value: float, info: ValidationInfo) -> float:
        loss_type = info.data.get("loss_type")
        if value > 0 and loss_type not in (None, *SMOOTHED_LOSSES):
            raise ValueError(f"label_smoothing applies to the 'sigmoid' and 'simpo' losses only, not {loss_type!r}")
        return value

    @model_validator(mode="after")
    def _resolve_beta(self) -> DPOHyperparameters:
        # Resolved once here, so the stored job (and what the API returns) shows the β that trains.
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss_type]
        return self

    @property
    def reference_free(self) -> bool:
        """Whether the loss reads no reference policy (SimPO, ORPO): no reference model, no reference log-probs."""
        return self.loss_type in REFERENCE_FREE_LOSSES


class ORPOHyperparameters(LoopHyperparameters):
    """Hyperparameters of Odds Ratio Preference Optimization (Hong et al. 2024, https://arxiv.org/abs/2403.07691).

    ORPO is the DPO loop with its loss fixed to ``orpo``: an SFT term on the chosen response plus λ
    times the odds-ratio term, without a reference model. The class attributes below let the DPO
    loop read an ORPO job as it reads a DPO job with ``loss_type: "orpo"``.
    """

    loss_type: ClassVar[Literal["orpo"]] = "orpo"
    label_smoothing: ClassVar[float] = 0.0
    simpo_gamma: ClassVar[float] = 0.0
    precompute_ref_logprobs: ClassVar[bool] = False
    reference_free: ClassVar[bool] = True

    learning_rate: float = Field(
        1e-6, gt=0, le=1, description="Peak AdamW learning rate (TRL's ORPOConfig: 1e-6; a tiny model needs ~1e-3)."
    )
    beta: float = Field(
        0.1, gt=0, le=100,
        description="λ: weight of the odds-ratio term −log σ(log odds(y_w) − log odds(y_l)) added to the SFT "
                    "loss of the chosen response (ORPO paper and TRL's ORPOConfig.beta: 0.1).",
    )


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


# The online-RL hyperparameters live in their own module; re-exported so every import keeps working.
from trainers.spec.rl_hyperparameters import GRPOHyperparameters, PPOHyperparameters, RLHyperparameters  # noqa: E402, F401
