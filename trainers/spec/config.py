"""Job specs for the trainers, declared once and reused by the API's request schemas (torch-free).

A job is its algorithm's model (`DPOJob`, `ORPOJob`, `RewardModelJob`, `GRPOJob`, `PPOJob`, `SFTJob`, `KTOJob`);
`JobConfig` is their union, discriminated by `type`, and everything that lists job types derives from it (`JOB_MODELS`,
`JOB_TYPES`, `JobType`). Adding an algorithm means adding its job model to that union and its
trainer to `trainers.run`. The hyperparameters of each algorithm live in `trainers.spec.hyperparameters`
(SFT's in `trainers.spec.sft`, KTO's in `trainers.spec.kto`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from trainers.spec.formats import DatasetKind
from trainers.spec.hyperparameters import (
    DPOHyperparameters,
    GRPOHyperparameters,
    LoopHyperparameters,
    ORPOHyperparameters,
    PPOHyperparameters,
    RewardModelHyperparameters,
    RLHyperparameters,
)
from trainers.spec.kto import KTOHyperparameters
from trainers.spec.rewards import RewardSpec, model_checkpoints
from trainers.spec.sft import SFTHyperparameters

__all__ = [
    "DPOHyperparameters",
    "DPOJob",
    "GRPOHyperparameters",
    "GRPOJob",
    "JOB_MODELS",
    "JOB_MODELS_BY_TYPE",
    "JOB_TYPES",
    "JobConfig",
    "JobSpec",
    "JobType",
    "KTOHyperparameters",
    "KTOJob",
    "LoRAConfig",
    "LoopHyperparameters",
    "ORPOHyperparameters",
    "ORPOJob",
    "PPOHyperparameters",
    "PPOJob",
    "RLHyperparameters",
    "RewardModelHyperparameters",
    "RewardModelJob",
    "SFTHyperparameters",
    "SFTJob",
    "Seed",
    "Strategy",
]

# A 32-bit unsigned seed (the range numpy's legacy generator takes too).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Strategy = Literal["auto", "ddp", "fsdp"]


class LoRAConfig(BaseModel):
    """Low-rank adapters via peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: float = Field(32.0, gt=0, le=4096, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(
        0.05, ge=0, lt=1,
        description="Dropout on the adapter's input; kept when hyperparameters.disable_dropout turns off "
                    "the model's own.",
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=256,
        description="Module names to adapt (e.g. ['q_proj', 'v_proj']); null adapts every linear layer.",
    )


class JobSpec(BaseModel):
    """Fields of every job: the model to start from, the seed, optional LoRA."""

    model_config = ConfigDict(extra="forbid")

    # The kind of dataset rows the job trains and evaluates on.
    dataset_kind: ClassVar[DatasetKind]
    # Other kinds its trainer reads too, converting their rows (KTO reads a preference pair as two feedback rows).
    also_reads: ClassVar[tuple[DatasetKind, ...]] = ()
    # Fields the service fills in rather than the user (the API's request schemas leave them out).
    service_fields: ClassVar[frozenset[str]] = frozenset()

    base_model: str = Field(
        ..., min_length=1, examples=["builtin:tiny-llama"],
        description="'builtin:tiny-llama', a local model directory, or a Hugging Face hub id.",
    )
    seed: Seed = Field(0, description="Seed for data order, initialisation and dropout.")
    lora: LoRAConfig | None = Field(None, description="Train low-rank adapters instead of all weights.")
    processes: int = Field(
        1, ge=1, le=1024,
        description="Processes the job trains on, one per GPU (or CPU share), started by torchrun; "
                    "hyperparameters.batch_size stays the global batch, split over them.",
    )
    strategy: Strategy = Field(
        "auto",
        description="How several processes share the model: 'ddp' (each holds it all, gradients all-reduced), "
                    "'fsdp' (FSDP2: weights, gradients and optimizer state sharded), or 'auto' (fsdp when the "
                    "weights and optimizer state would not fit one device). Ignored with one process.",
    )


class DPOJob(JobSpec):
    """Direct Preference Optimization on a preference dataset."""

    dataset_kind: ClassVar[DatasetKind] = "preference"

    type: Literal["dpo"] = Field("dpo", description="Training algorithm.")
    hyperparameters: DPOHyperparameters = Field(default_factory=DPOHyperparameters, description="DPO settings.")


class ORPOJob(JobSpec):
    """Odds Ratio Preference Optimization on a preference dataset: SFT plus an odds-ratio term, no reference model."""

    dataset_kind: ClassVar[DatasetKind] = "preference"

    type: Literal["orpo"] = Field("orpo", description="Training algorithm.")
    hyperparameters: ORPOHyperparameters = Field(default_factory=ORPOHyperparameters, description="ORPO settings.")


class KTOJob(JobSpec):
    """Kahneman-Tversky Optimization on feedback rows (completions labelled desirable or not), or preference pairs."""

    dataset_kind: ClassVar[DatasetKind] = "feedback"
    also_reads: ClassVar[tuple[DatasetKind, ...]] = ("preference",)

    type: Literal["kto"] = Field("kto", description="Training algorithm.")
    hyperparameters: KTOHyperparameters = Field(default_factory=KTOHyperparameters, description="KTO settings.")


class RewardModelJob(JobSpec):
    """A Bradley-Terry reward model on a preference dataset; its checkpoints score text."""

    dataset_kind: ClassVar[DatasetKind] = "preference"

    type: Literal["reward_model"] = Field("reward_model", description="Training algorithm.")
    hyperparameters: RewardModelHyperparameters = Field(
        default_factory=RewardModelHyperparameters, description="Reward-model settings."
    )


class SFTJob(JobSpec):
    """Supervised fine-tuning on a chat dataset: cross-entropy on the assistant turns (or completions)."""

    dataset_kind: ClassVar[DatasetKind] = "chat"

    type: Literal["sft"] = Field("sft", description="Training algorithm.")
    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters, description="SFT settings.")


class _OnlineRLJob(JobSpec):
    """What PPO and GRPO jobs add: the reward, and where the service found its reward models."""

    dataset_kind: ClassVar[DatasetKind] = "prompt"
    service_fields: ClassVar[frozenset[str]] = frozenset({"reward_model_dirs", "reward_function_modules"})

    # Declared here, and narrowed by each algorithm, so that it is validated before `reward`,
    # whose checks may depend on it.
    hyperparameters: RLHyperparameters = Field(default_factory=RLHyperparameters, description="Online-RL settings.")

    reward: RewardSpec = Field(
        ..., examples=[{"type": "string_check", "name": "answer", "operation": "contains",
                        "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}],
        description="What a completion earns: a reward-model checkpoint, graders, or a 'multi' of them.",
    )  # fmt: skip
    reward_model_dirs: dict[str, str] = Field(
        default_factory=dict,
        description="Checkpoint id → local model directory of every reward model the reward names; filled "
                    "in by the service, so the trainer loads reward models without knowing where they are kept.",
    )
    reward_function_modules: list[str] = Field(
        default_factory=list,
        description="Modules whose registered reward functions 'function' graders may call (server "
                    "configuration, passed through by the service).",
    )


class GRPOJob(_OnlineRLJob):
    """GRPO on a prompt dataset: groups of completions scored by the reward, no critic."""

    type: Literal["grpo"] = Field("grpo", description="Training algorithm.")
    hyperparameters: GRPOHyperparameters = Field(default_factory=GRPOHyperparameters, description="GRPO settings.")


class PPOJob(_OnlineRLJob):
    """PPO on a prompt dataset: actor, critic, frozen reward and reference models."""

    type: Literal["ppo"] = Field("ppo", description="Training algorithm.")
    hyperparameters: PPOHyperparameters = Field(default_factory=PPOHyperparameters, description="PPO settings.")

    @field_validator("reward")
    @classmethod
    def _critic_needs_a_reward_model(cls, value: RewardSpec, info: ValidationInfo) -> RewardSpec:
        hp = info.data.get("hyperparameters")
        if hp is not None and hp.value_model == "reward_model" and not model_checkpoints(value):
            raise ValueError(
                "hyperparameters.value_model 'reward_model' starts the critic from a reward model, "
                "but this reward has no 'model' grader: add one, or use value_model 'policy'"
            )
        return value


# The one list of job types: a new algorithm's job model goes here.
AnyJob = DPOJob | ORPOJob | RewardModelJob | GRPOJob | PPOJob | SFTJob | KTOJob
JobConfig = Annotated[AnyJob, Field(discriminator="type")]
JOB_MODELS: tuple[type[JobSpec], ...] = get_args(AnyJob)
JOB_MODELS_BY_TYPE: dict[str, type[JobSpec]] = {model.model_fields["type"].default: model for model in JOB_MODELS}
JOB_TYPES: tuple[str, ...] = tuple(JOB_MODELS_BY_TYPE)
JobType = Literal[JOB_TYPES]  # type: ignore[valid-type]  # the same names, for query parameters
