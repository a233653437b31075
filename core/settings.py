"""One typed settings object, read from the environment (and `.env`), shared by api and worker."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.db import PoolOptions

Seconds = Annotated[float, Field(gt=0)]  # an interval or a deadline: never zero (a grace period may be)
PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "admin", "password", "changethis"}


class Settings(BaseSettings):
    """Deployment settings. Defaults are the embedded mode: SQLite, a serverless broker, local disk."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///./var/rlhf.db",
        description="SQLAlchemy URL of the database, e.g. postgresql+psycopg://user:pw@host/db.",
    )
    celery_broker_url: str = Field(
        "sqla+sqlite:///./var/broker.db",
        description="Celery broker URL: redis://host:6379/0 in production; the default needs no server.",
    )
    artifacts_dir: Path = Field(Path("./var/artifacts"), description="Where checkpoints are stored; with "
                                                                    "ARTIFACTS_URL set, where checkpoints are "
                                                                    "staged and downloaded copies cached.")
    artifacts_url: str = Field(
        "", description="s3://bucket/prefix to keep checkpoints in S3-compatible object storage (AWS S3, MinIO, "
                        "Ceph), shared by workers on several machines; empty keeps them in ARTIFACTS_DIR.")
    artifacts_s3_endpoint_url: str | None = Field(
        None, description="Endpoint of a non-AWS object store, e.g. http://minio:9000; unset means AWS S3.")
    artifacts_s3_region: str | None = Field(None, description="Region of the bucket (AWS_REGION by default).")
    artifacts_s3_access_key_id: str | None = Field(
        None, description="Access key of the object store; unset uses the standard AWS credential chain.")
    artifacts_s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret key going with ARTIFACTS_S3_ACCESS_KEY_ID.")
    artifacts_s3_part_size_bytes: int = Field(
        64 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3,
        description="Files above this size are uploaded and downloaded in parallel parts of this size.")
    models_dir: Path = Field(
        Path("./var/models"),
        description="Root of local model directories a job may name as base_model (nothing outside it).",
    )
    training_queue: str = Field("training", description="Celery queue the training tasks go to.")
    db_outage_grace_seconds: NonNegativeFloat = Field(
        300.0, description="How long a training run waits out an unreachable database before failing.")
    heartbeat_seconds: Seconds = Field(5.0, description="How often a worker renews its job lease.")
    lease_seconds: Seconds = Field(60.0, description="A running job whose worker has not renewed its lease for "
                                                     "this long is requeued (it resumes from its last checkpoint).")
    max_attempts: int = Field(3, ge=1, le=100, description="Runs a job gets before a lost worker fails it.")
    reaper_interval_seconds: Seconds = Field(15.0, description="How often workers look for lost jobs.")
    unsent_grace_seconds: NonNegativeFloat = Field(
        10.0, description="A queued job not yet sent to the broker is left this long to its own sender before the "
                          "workers' reaper loop sends it.")
    resend_after_seconds: Seconds = Field(300.0, description="A queued job sent this long ago is looked for in the "
                                                             "broker, and sent again if its message is gone.")
    db_pool_size: int = Field(5, ge=1, le=1000, description="Database connections each API process keeps open.")
    db_max_overflow: int = Field(
        10, ge=0, le=1000, description="Connections an API process may open beyond DB_POOL_SIZE under load.")
    db_pool_timeout_seconds: Seconds = Field(10.0, description="Longest a request waits for a free database "
                                                               "connection; then 503 with Retry-After.")
    stream_poll_seconds: Seconds = Field(
        0.5, description="How often a job's live streams look for news without a Redis wake-up.")
    stream_keepalive_seconds: Seconds = Field(15.0, description="SSE comment interval when idle.")
    download_link_seconds: Seconds = Field(
        900.0, description="How long a checkpoint download link (POST /v1/checkpoints/{id}/download_link) "
                           "works; it serves any number of downloads until then.")
    model_ops_timeout_seconds: Seconds = Field(600.0, description="Longest a scoring, adapter-merge or chat "
                                                                  "completion request may run; beyond it the model "
                                                                  "process is restarted and the request answers 504.")
    model_ops_cache_bytes: NonNegativeInt = Field(2 * 1024**3, description="Most bytes of model weights (reward "
                                                                           "models scoring, causal LMs completing "
                                                                           "chats) the model process keeps loaded "
                                                                           "(least recently used evicted first).")
    chat_default_max_tokens: PositiveInt = Field(
        1024, description="Tokens per chat completion when a request sets neither max_tokens nor "
                          "max_completion_tokens (fewer when the model's context is shorter).")
    model_ops_idle_seconds: Seconds = Field(
        600.0, description="The model process unloads its models after this long without a request.")
    max_upload_bytes: PositiveInt = Field(2 * 1024**3, description="Largest dataset file accepted (413 above).")
    max_dataset_rows: PositiveInt = Field(5_000_000, description="Most rows a dataset may hold (413 above).")
    max_row_bytes: PositiveInt = Field(8 * 1024**2, description="Largest single row of a dataset file.")
    stale_upload_seconds: Seconds = Field(600.0, description="A dataset upload that has written no rows for this "
                                                             "long was left by a stopped API process: the next "
                                                             "upload deletes it.")
    max_json_body_bytes: PositiveInt = Field(1024**2, description="Largest JSON request body (413 above).")
    max_json_depth: int = Field(32, ge=4, le=1000, description="Deepest nesting a JSON request body may have.")
    admin_api_key: SecretStr | None = Field(
        None, description="Key of the /v1/admin endpoints (projects and their keys); unset disables them.")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token GET /metrics requires (`Authorization: Bearer <token>`); unset or empty "
                          "leaves /metrics open to whoever can reach the API.")
    local_key_file: Path = Field(
        Path("./var/api-key"), description="Where `rlhf-service serve` writes the key it creates on first start.")
    reward_function_modules: list[str] = Field(
        default_factory=list,
        description='Modules of Python reward functions that "function" graders may call, as a JSON list; '
                    "they run on the server, so only install what you trust.")
    torch_threads: NonNegativeInt = Field(0, description="CPU threads per training process; 0 lets torch decide.")
    worker_devices: PositiveInt = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Devices each worker trains on: its GPUs (docker-compose sets it with the GPU reservation), "
                    "or on a CPU-only worker its CPU cores, which unset is the default. A job may ask for at most "
                    "this many processes (a 422 naming `processes` above it); one job runs on one worker's node.")

    @field_validator("artifacts_url")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        if value and (not value.startswith("s3://") or not value.removeprefix("s3://").split("/", 1)[0]):
            raise ValueError("ARTIFACTS_URL must be s3://bucket or s3://bucket/prefix (or empty for ARTIFACTS_DIR)")
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes `METRICS_TOKEN: ${METRICS_TOKEN:-}` through as an empty string when unset.
        return None if value == "" else value

    @field_validator("admin_api_key", "metrics_token")
    @classmethod
    def _no_placeholder_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < 24 or secret.lower() in PLACEHOLDER_SECRETS or len(set(secret)) < 8:
            raise ValueError(f"{info.field_name.upper()} must be a random secret of at least 24 characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return value

    @property
    def db_pool(self) -> PoolOptions:
        return PoolOptions(self.db_pool_size, self.db_max_overflow, self.db_pool_timeout_seconds)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
