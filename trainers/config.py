"""Job specs for the trainers, declared once and reused by the API's request schemas (torch-free).

Defaults follow the papers (DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290; reward
models: Ouyang et al. 2022, https://arxiv.org/abs/2203.02155) and TRL where the papers are silent.
Every field carries its bounds and a description, which Swagger shows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


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
        256, ge=1, le=32768,
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


class LoRAConfig(BaseModel):
    """Low-rank adapters via peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: float = Field(32.0, gt=0, le=4096, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=256,
        description="Module names to adapt (e.g. ['q_proj', 'v_proj']); null adapts every linear layer.",
    )


class JobSpec(BaseModel):
    """Fields of every job: the model to start from, the seed, optional LoRA."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        ..., min_length=1, examples=["builtin:tiny-llama"],
        description="'builtin:tiny-llama', a local model directory, or a Hugging Face hub id.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for data order, initialisation and dropout.")
    lora: LoRAConfig | None = Field(None, description="Train low-rank adapters instead of all weights.")


class DPOJob(JobSpec):
    """A DPO training job: what `trainers.run` takes."""

    type: Literal["dpo"] = Field("dpo", description="Training algorithm.")
    hyperparameters: DPOHyperparameters = Field(default_factory=DPOHyperparameters, description="DPO settings.")


class RewardModelJob(JobSpec):
    """A reward-model training job on preference pairs."""

    type: Literal["reward_model"] = Field("reward_model", description="Training algorithm.")
    hyperparameters: RewardModelHyperparameters = Field(
        default_factory=RewardModelHyperparameters, description="Reward-model settings."
    )


JobConfig = Annotated[DPOJob | RewardModelJob, Field(discriminator="type")]
