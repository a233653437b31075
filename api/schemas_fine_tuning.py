"""Schemas of /v1/fine_tuning/jobs, in OpenAI's shapes (`openai.types.fine_tuning`).

Hyperparameters take OpenAI's names, each `"auto"` or a value; a value out of bounds or a name that
is not OpenAI's is refused with the field's path as `param`
(`method.supervised.hyperparameters.n_epoch`). How they map onto the native trainers' hyperparameters
is `api.services.fine_tuning_methods`.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from api.schemas import Metadata
from trainers.spec.config import Seed

Auto = Literal["auto"]


def _invalid(message: str) -> PydanticCustomError:
    """A refusal whose message reads as written (a ValueError's gains "Value error, ")."""
    return PydanticCustomError("value_error", message)


def _auto_number(kind: type, *, gt: float | None = None, ge: float | None = None, le: float | None = None) -> Any:
    """A hyperparameter that is "auto" (or null, read as "auto") or a number of `kind` within bounds.

    One plain validator instead of a `Literal["auto"] | int` union, so that an error is located at
    the field itself rather than at one of the union's members.
    """
    name = "an integer" if kind is int else "a number"

    def check(value: object) -> object:
        if value is None or value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(f'must be "auto" or {name}')
        if kind is int:
            if value != int(value):
                raise _invalid(f'must be "auto" or {name}')
            value = int(value)
        else:
            value = float(value)
        if gt is not None and not value > gt:
            raise _invalid(f"must be greater than {gt}")
        if ge is not None and not value >= ge:
            raise _invalid(f"must be at least {ge}")
        if le is not None and not value <= le:
            raise _invalid(f"must be at most {le}")
        return value

    schema = {"anyOf": [{"type": "string", "enum": ["auto"]},
                        {"type": "integer" if kind is int else "number"}], "default": "auto"}
    return Annotated[Auto | kind, PlainValidator(check), WithJsonSchema(schema)]


NEpochs = _auto_number(int, ge=1, le=100)
BatchSize = _auto_number(int, ge=1, le=65536)
LearningRateMultiplier = _auto_number(float, gt=0, le=1e6)
Beta = _auto_number(float, gt=0, le=100)
EvalInterval = _auto_number(int, ge=1, le=1_000_000)
EvalSamples = _auto_number(int, ge=1, le=1_000_000)
ComputeMultiplier = _auto_number(float, gt=0, le=128)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupervisedHyperparameters(_Strict):
    """Supervised fine-tuning (our `sft`)."""

    n_epochs: NEpochs = Field("auto", description="Passes over the training file.")
    batch_size: BatchSize = Field("auto", description="Examples per optimizer step.")
    learning_rate_multiplier: LearningRateMultiplier = Field(
        "auto", description="× the algorithm's default learning rate.")


class DpoHyperparameters(SupervisedHyperparameters):
    """DPO (our `dpo`)."""

    beta: Beta = Field("auto", description="β of the DPO loss: strength of the pull towards the reference model.")


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """Reinforcement fine-tuning (our `grpo`)."""

    batch_size: BatchSize = Field("auto", description="Prompts per rollout (one optimizer step per rollout).")
    compute_multiplier: ComputeMultiplier = Field(
        "auto", description="× the completions sampled per prompt (num_generations 8 at 1; at least 2).")
    eval_interval: EvalInterval = Field("auto", description="Optimizer steps between evaluations.")
    eval_samples: EvalSamples = Field(
        "auto", description="Completions per validation prompt at each evaluation; only 1 is supported.")
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = Field(
        None, description='Only "default": the models trained here have no reasoning-effort setting.')


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(_Strict):
    grader: dict[str, Any] = Field(description="An OpenAI grader object (string_check, text_similarity, multi, "
                                               "score_model with a reward model).")
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


# A colon would split the model name `ft:<base>:<project>:<suffix>:<job id>` in the wrong place.
Suffix = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^:\s]*$")]


class FineTuningJobCreate(_Strict):
    """POST /v1/fine_tuning/jobs: OpenAI's request body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model": "builtin:tiny-llama", "training_file": "file-abc123", "suffix": "shout",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}]})

    model: str = Field(min_length=1, max_length=512,
                       description="The base model: builtin:<name>, checkpoint:<id>, a fine-tuned model's name "
                                   "(ft:...), a Hugging Face hub id, or a directory under the models root.")
    training_file: str = Field(max_length=64, description="A file id (file-...) or a dataset id.")
    validation_file: str | None = Field(None, max_length=64)
    method: Method | None = Field(None, description="Defaults to supervised.")
    hyperparameters: SupervisedHyperparameters | None = Field(
        None, description="Deprecated by OpenAI: the supervised method's hyperparameters.")
    suffix: Suffix | None = Field(None, description="Up to 64 characters of the fine-tuned model's name (no colon).")
    seed: Seed | None = Field(None, description="Chosen for you if unset.")
    metadata: Metadata | None = Field(None, max_length=16, description="Up to 16 string pairs.")
    integrations: list[Any] | None = Field(None, description="Not supported: must be empty or null.")


class JobError(BaseModel):
    code: str = Field(description="user_error or internal_error.")
    message: str
    param: str | None = None


class FineTuningJobPublic(BaseModel):
    """OpenAI's `fine_tuning.job`."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str = Field(description="The project's id.")
    result_files: list[str]
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
    hyperparameters: dict[str, Any] = Field(description="n_epochs, batch_size and learning_rate_multiplier used.")
    method: dict[str, Any] = Field(description="{type, <type>: {hyperparameters (every value resolved), grader}}.")
    training_file: str
    validation_file: str | None
    trained_tokens: int | None
    estimated_finish: int | None
    error: JobError | None
    seed: int
    suffix: str | None
    user_provided_suffix: str | None
    metadata: dict[str, str] | None
    integrations: list[Any] | None


class FineTuningJobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobPublic]
    has_more: bool


class FineTuningJobEventPublic(BaseModel):
    """OpenAI's `fine_tuning.job.event`."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class FineTuningJobEventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEventPublic]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpointPublic(BaseModel):
    """OpenAI's `fine_tuning.job.checkpoint`."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class FineTuningJobCheckpointsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpointPublic]
    has_more: bool
