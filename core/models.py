"""SQLAlchemy 2.0 models: datasets and their rows, jobs, job events, metrics and checkpoints."""

import enum
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Explicit constraint names keep Alembic revisions reversible and identical across databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY, so the BigInteger keys are plain integers there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A public id such as `job_3f9a...`: prefixed so ids of different resources never mix."""
    return f"{prefix}_{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    pausing = "pausing"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
# Not ended: the job still reads its datasets (a paused one when it is resumed), so they stay protected.
ACTIVE_STATUSES = frozenset({JobStatus.queued, JobStatus.running, JobStatus.cancelling, JobStatus.pausing,
                             JobStatus.paused})


class Project(Base):
    """A tenant: datasets, jobs and everything they produce belong to one project."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("proj"))
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """A project's API key; only its sha256 is stored (keys are random, so no slow hash is needed)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings so a user can tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(512))
    format: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    # `uploading` while rows are written in bounded transactions; only `ready` datasets are visible.
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready", index=True)
    # Renewed by each committed batch of an upload, so a stale `uploading` dataset can be told apart.
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # The upload's `column_map` (canonical key -> the file's column), applied to every row before validation.
    column_map: Mapped[dict[str, str] | None] = mapped_column(JSONType)
    # Uploads with skip_invalid=true: {"count": N, "rows": [{line, field, message}, ...]} (the first 50).
    skipped: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class DatasetRow(Base):
    __tablename__ = "dataset_rows"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    line: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    base_model: Mapped[str] = mapped_column(String(512))
    # No foreign keys: a job keeps naming the data it trained on after the dataset is deleted.
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    eval_dataset_id: Mapped[str | None] = mapped_column(String(40), index=True)
    ptx_dataset_id: Mapped[str | None] = mapped_column(String(40), index=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType)
    lora: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reward: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # PPO/GRPO: what a completion earns
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    processes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # ranks under torchrun
    strategy: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")  # ddp, fsdp or auto
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(256))
    # When the broker last accepted this job's message; NULL while a `queued` job still has to be sent.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # OpenAI's `suffix`: a part of the fine-tuned model's name (`ft:<base>:<project>:<suffix>:<job id>`).
    suffix: Mapped[str | None] = mapped_column(String(64))
    # When the fine-tuned model was deleted (DELETE /v1/models/{model}); it is no longer listed or served.
    model_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The observed pace of the current run, after its warm-up (null until measured, cleared when it ends).
    steps_per_second: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobEvent(Base):
    """Everything a job says over time besides metrics: status changes, messages, checkpoints."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))  # status | event | checkpoint
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Metric(Base):
    """The metrics of one optimizer step; (job, step) is unique so a resumed run overwrites, never duplicates."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, float]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobSample(Base):
    """A few prompt/completion/reward rows of one PPO/GRPO rollout; (job, step) is unique like metrics."""

    __tablename__ = "job_samples"
    __table_args__ = (UniqueConstraint("job_id", "step"), Index("ix_job_samples_job_id_id", "job_id", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    # [{"prompt": str, "completion": str, "reward": float, ...}, ...]
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DownloadToken(Base):
    """A short-lived link to download one checkpoint without an API key (a browser's <a href>).

    Only the token's sha256 is stored; the token itself is shown once, in the link.
    """

    __tablename__ = "download_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    merged: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    artifact_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, float]] = mapped_column(JSONType)
    probe: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # What the checkpoint holds: {"kind": "causal_lm" | "reward_model", "adapter": bool, ...}.
    model_info: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # A LoRA checkpoint's merged model is built on first request and kept beside the adapter.
    merged_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    merged_sha256: Mapped[str | None] = mapped_column(String(64))
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
