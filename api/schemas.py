"""Request and response schemas (`XCreate` in, `XPublic` out, `XsPublic` for pages).

A job's request body is built from the trainers' own job model (`trainers.spec.config`), so Swagger
shows the real defaults and bounds; the service's fields (datasets, name, metadata) are added to it.
"""

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    create_model,
    model_validator,
)

from api.storable import text_problem
from trainers.spec.config import JOB_MODELS, JobSpec, Seed
from trainers.spec.config import JOB_TYPES as JOB_TYPES  # the job types, for reading validation errors
from trainers.spec.formats import DatasetKind
from trainers.spec.rewards import RewardSpec


def _storable(value: str) -> str:
    if problem := text_problem(value):
        raise ValueError(problem)
    return value


# Form fields are not JSON, so BodyLimits does not see them: this type refuses what it would.
StorableStr = Annotated[str, AfterValidator(_storable)]
Metadata = dict[Annotated[str, StringConstraints(max_length=64)],
                Annotated[str, StringConstraints(max_length=512)]]


class PublicModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RowProblem(BaseModel):
    line: int = Field(description="Line (or record) of the uploaded file, 1-based; a CSV header is line 1.")
    field: str | None = Field(description="The field at fault (a dotted path), or null for the record as a whole.")
    message: str


class SkippedRows(BaseModel):
    count: int = Field(description="How many records of the file were invalid and left out.")
    rows: list[RowProblem] = Field(description="The first 50 of them, in file order, with their reasons.")


class DatasetPublic(PublicModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    kind: DatasetKind
    filename: str
    format: str
    row_count: int
    size_bytes: int
    sha256: str
    column_map: dict[str, str] | None = Field(
        None, description="The upload's column_map (canonical key -> the file's column), or null.")
    skipped: SkippedRows | None = Field(
        None, description="Uploads with skip_invalid=true: the invalid records left out (count 0 if none); "
                          "null otherwise.")
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    has_more: bool


class DatasetRowPublic(PublicModel):
    idx: int = Field(description="0-based position of the row in the dataset.")
    line: int = Field(description="Line (or record) of the uploaded file the row came from.")
    data: dict[str, Any]


class DatasetRowsPublic(BaseModel):
    data: list[DatasetRowPublic]
    has_more: bool


class JobRequest(BaseModel):
    """What every POST /v1/jobs body adds to the trainers' job model: the service's own fields."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        min_length=1, max_length=512, examples=["builtin:tiny-llama"],
        description="builtin:<name>, checkpoint:<id>, a Hugging Face hub id, or a directory under "
                    "the server's models root.",
    )
    dataset_id: str = Field(max_length=40, description="Training dataset.")
    eval_dataset_id: str | None = Field(None, max_length=40, description="Optional evaluation dataset.")
    seed: Seed | None = Field(None, description="Random seed; chosen for you if unset.")
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = Field(None, max_length=16, description="Up to 16 string pairs.")


class PTXJobRequest(JobRequest):
    """PPO's service fields: the text dataset of PPO-ptx's language-modelling loss."""

    ptx_dataset_id: str | None = Field(
        None, max_length=40, description="A text dataset ({\"text\": ...} rows) for PPO-ptx's language-modelling "
                                         "loss; required when hyperparameters.ptx_coef > 0.")


# The service fields of each job type, where it has more than JobRequest's.
REQUEST_FIELDS: dict[str, type[JobRequest]] = {"ppo": PTXJobRequest}


def job_request_model(job_model: type[JobSpec]) -> type[JobRequest]:
    """The POST /v1/jobs body of one job type: the trainers' job model, less what the service fills in,
    with the service's fields. The trainers' cross-field rules run when the service converts the job."""
    job_type = job_model.model_fields["type"].default
    base = REQUEST_FIELDS.get(job_type, JobRequest)
    fields: dict[str, Any] = {
        name: (field.annotation, field) for name, field in job_model.model_fields.items()
        if name not in base.model_fields and name not in job_model.service_fields
    }
    fields["type"] = (Literal[job_type], Field(description="Training algorithm."))  # required in a request
    return create_model(f"{job_model.__name__}Create", __base__=base, __doc__=job_model.__doc__, **fields)


JOB_CREATE_MODELS = tuple(job_request_model(job_model) for job_model in JOB_MODELS)
# The body of POST /v1/jobs, discriminated by `type`.
JobCreate = Annotated[Union[JOB_CREATE_MODELS], Field(discriminator="type")]  # noqa: UP007


class JobError(BaseModel):
    type: Literal["user_error", "internal_error"]
    message: str
    param: str | None = None


class JobPublic(PublicModel):
    id: str
    object: Literal["job"] = "job"
    type: str
    status: Literal["queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"] = Field(
        description="queued -> running -> succeeded | failed | cancelled; `cancelling` and `pausing` until the run "
                    "stops at its next step; `paused` holds no worker until a resume queues it again.")
    name: str | None
    base_model: str
    dataset_id: str
    eval_dataset_id: str | None
    hyperparameters: dict[str, Any] = Field(description="Fully resolved, defaults included.")
    lora: dict[str, Any] | None = Field(description="Fully resolved LoRA settings, when LoRA is on.")
    reward: dict[str, Any] | None = Field(description="PPO/GRPO: the reward spec, as resolved.")
    ptx_dataset_id: str | None = Field(description="PPO-ptx: the text dataset of the language-modelling loss.")
    seed: int
    processes: int = Field(description="Processes the job trains on (torchrun ranks).")
    strategy: str = Field(description="How its processes share the model: auto, ddp or fsdp.")
    metadata: dict[str, str] | None = Field(validation_alias="metadata_")
    error: JobError | None
    current_step: int
    total_steps: int | None
    steps_per_second: float | None = Field(
        description="Optimizer steps per second of the current run, smoothed over about its last two minutes and "
                    "measured from its first step on (loading and the first step's warm-up left out); null until "
                    "measured and whenever the job is not running.")
    tokens_per_second: float | None = Field(
        description="Training tokens per second of the current run, measured as steps_per_second, for jobs "
                    "that count their tokens (train/num_tokens: SFT); null otherwise.")
    estimated_finish: datetime | None = Field(
        description="When the current run should reach total_steps at steps_per_second; null whenever "
                    "steps_per_second is.")
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @computed_field(description="current_step / total_steps, from 0 to 1 (1 once succeeded); null while "
                                "total_steps is unknown.")
    @property
    def progress(self) -> float | None:
        if self.status == "succeeded":
            return 1.0
        if not self.total_steps:
            return None
        return min(max(self.current_step / self.total_steps, 0.0), 1.0)


class JobsPublic(BaseModel):
    data: list[JobPublic]
    has_more: bool


class MetricPublic(PublicModel):
    step: int
    values: dict[str, float] = Field(description="`group/name` keys, e.g. train/loss.")
    created_at: datetime


class MetricsPublic(BaseModel):
    data: list[MetricPublic]
    has_more: bool


class SamplePublic(PublicModel):
    step: int = Field(description="The optimizer step that ended the rollout.")
    rows: list[dict[str, Any]] = Field(
        description='A few of its completions: {"prompt": str, "completion": str, "reward": float | null, '
                    '"length": int (tokens)}, with "reward/<grader>" per grader or reward model, GRPO\'s '
                    '"advantage" and PPO\'s "kl".')
    created_at: datetime


class SamplesPublic(BaseModel):
    data: list[SamplePublic]
    has_more: bool


class EventPublic(PublicModel):
    id: int
    type: Literal["status", "event", "checkpoint"]
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class EventsPublic(BaseModel):
    data: list[EventPublic]
    has_more: bool


class CheckpointPublic(PublicModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    step: int
    metrics: dict[str, float] = Field(description="Metrics of the job at this step.")
    size_bytes: int = Field(description="Size of the download archive.")
    sha256: str = Field(description="sha256 of the download archive.")
    is_final: bool
    model: dict[str, Any] | None = Field(
        validation_alias="model_info",
        description='What it holds: {"kind": "causal_lm" | "reward_model", "adapter": bool, "base_model"; '
                    'reward models also "reward_mean" and "reward_std" on their training data}.')
    merged_sha256: str | None = Field(description="sha256 of the merged-model archive, once built.")
    probe: dict[str, Any] | None = Field(
        description="Logits of the trained model on a fixed text, to verify a loaded copy.")
    created_at: datetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    has_more: bool


Message = dict[str, str]


class ScorePair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, StringConstraints(max_length=100_000)] | list[Message]
    response: Annotated[str, StringConstraints(max_length=100_000)] | list[Message]


class ScoreRequest(BaseModel):
    """Either `texts` (scored as they are) or `pairs` (rendered as in training), not both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"pairs": [{"prompt": "say: hello\n", "response": "HELLO"}]}]})

    texts: list[Annotated[str, StringConstraints(min_length=1, max_length=100_000)]] | None = Field(
        None, min_length=1, max_length=256)
    pairs: list[ScorePair] | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _exactly_one(self) -> "ScoreRequest":
        if (self.texts is None) == (self.pairs is None):
            raise ValueError("give exactly one of texts or pairs")
        return self


class ScorePublic(BaseModel):
    score: float = Field(description="The reward model's raw output.")
    normalized: float | None = Field(
        None, description="(score - mean) / std with the reward statistics of its training data.")


class ScoresPublic(BaseModel):
    checkpoint_id: str
    data: list[ScorePublic]


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)


class ProjectPublic(PublicModel):
    id: str
    object: Literal["project"] = "project"
    name: str
    created_at: datetime


class ProjectsPublic(BaseModel):
    data: list[ProjectPublic]
    has_more: bool


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("default", min_length=1, max_length=256)


class ApiKeyPublic(PublicModel):
    id: str
    object: Literal["api_key"] = "api_key"
    project_id: str
    name: str
    prefix: str = Field(description="The first characters of the key, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself. It is shown once and cannot be read again.")


class ApiKeysPublic(BaseModel):
    data: list[ApiKeyPublic]
    has_more: bool


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, conflict_error, "
                                  "request_too_large, service_unavailable or internal_error.")
    message: str
    param: str | None = Field(description="The field, header or parameter at fault, when there is one.")
    details: list[dict[str, Any]] = Field(description="Per-row or per-field problems, e.g. {line, field, message}.")


class ErrorResponse(BaseModel):
    """Every error answer of the API has this one shape."""

    error: ErrorBody


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a router can answer, all with the error envelope."""
    text = {400: "The body could not be parsed", 401: "Missing, unknown or revoked API key",
            404: "Not found (or not this project's)",
            409: "Conflicts with the current state", 413: "Larger than a configured limit",
            422: "Invalid request", 500: "Internal error", 503: "Database or broker unavailable; retry later"}
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


class ReadyStatus(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description='Per dependency: "ok" or why it is unreachable.')


REWARD_DESCRIPTION = ("What a completion earns: a reward-model checkpoint of this project, graders "
                      "(string_check, text_similarity, length, format, function), or a 'multi' combining them.")
REWARD_EXAMPLE = {"type": "string_check", "name": "answer", "operation": "contains",
                  "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


class GraderRunRequest(BaseModel):
    """A reward spec tried on one sample, without training anything."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "reward": REWARD_EXAMPLE, "completion": "The answer is 4.", "item": {"answer": "4"}}]})

    reward: RewardSpec = Field(description=REWARD_DESCRIPTION)
    completion: Annotated[str, StringConstraints(max_length=100_000)] = Field(
        description="The completion to grade ({{sample.output_text}}).")
    item: dict[str, Any] = Field(default_factory=dict, description="The prompt row ({{item.<field>}}).")
    model_scores: dict[str, float] | None = Field(
        None, description="Scores to use for 'model' rewards, by checkpoint id (they are not run here).")


class GraderRunPublic(BaseModel):
    reward: float = Field(description="The combined reward of the completion.")
    per_grader: dict[str, float] = Field(description="Each grader's score, before weights.")
    errors: list[str] = Field(description="Graders that could not grade this sample (they scored 0).")
