"""Job specs for the trainers, declared once and reused by the API's request schemas (torch-free).

Defaults follow the papers (DPO: Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) and
TRL where the paper is silent. Every field carries its bounds and a description, which Swagger shows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class DPOHyperparameters(BaseModel):
    """Hyperparameters of Direct Preference Optimization."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(
        1e-6,
        gt=0,
        le=1,
        description="Peak AdamW learning rate (DPO paper: 1e-6; builtin:tiny-llama learns with ~1e-3).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="β: strength of the implicit KL penalty towards the reference model (DPO paper: 0.1).",
    )
    loss_type: Literal["sigmoid"] = Field(
        "sigmoid",
        description="DPO loss: 'sigmoid' is −log σ(β·h), eq. 7 of the DPO paper.",
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="Preference pairs per optimizer step, split across gradient accumulation.",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Micro-batches per optimizer step; trades speed for memory, not results.",
    )
    n_epochs: int = Field(1, ge=1, le=100, description="Passes over the training pairs.")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Optimizer steps to run; overrides n_epochs when set (the data is cycled).",
    )
    max_length: int = Field(
        512,
        ge=8,
        le=32768,
        description="Most tokens of prompt plus response; responses are cut on the right to fit.",
    )
    max_prompt_length: int = Field(
        256,
        ge=1,
        le=32768,
        description="Most prompt tokens; longer prompts keep their last tokens. Must be < max_length.",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description=(
            "Steps of linear learning-rate warmup (step k uses k/(warmup_steps+1) of the rate); "
            "the rate is constant afterwards."
        ),
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(
        1.0,
        gt=0,
        le=1e6,
        description="Gradients are clipped to this global L2 norm before each step.",
    )
    checkpoint_every: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Save a checkpoint every this many optimizer steps; one is always saved at the end.",
    )
    log_every: int = Field(1, ge=1, le=1_000_000, description="Report metrics every this many steps.")

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


class DPOJob(BaseModel):
    """A DPO training job: what `trainers.run` takes."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["dpo"] = Field("dpo", description="Training algorithm.")
    base_model: str = Field(
        ...,
        min_length=1,
        description="'builtin:tiny-llama', a local model directory, or a Hugging Face hub id.",
        examples=["builtin:tiny-llama"],
    )
    hyperparameters: DPOHyperparameters = Field(
        default_factory=DPOHyperparameters, description="DPO hyperparameters."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for data order and dropout.")


# Becomes `Annotated[DPOJob | PPOJob | ..., Field(discriminator="type")]` as trainers are added.
JobConfig = DPOJob
