"""Native jobs, events, metrics and checkpoints as OpenAI's fine-tuning objects.

Status: queued → `queued`; running, and the moments a running job takes to stop (`cancelling`,
`pausing`), → `running` (it still trains until its next step; `cancelled`/`paused` follow); paused,
succeeded, failed, cancelled as they are. Files are validated at upload, so no job is ever
`validating_files`. `estimated_finish` is the job's own estimate (measured by its running worker,
`worker.pace`), in unix seconds; null unless the job is running.

Events, newest first: the job's events (status changes, warnings, checkpoints; type `message`) and
one `metrics` event per reported step, with OpenAI's keys (step, total_steps, train_loss,
train_mean_token_accuracy, valid_loss, ...) and the native metrics beside them. Their ids are
`ftevent-e<n>` and `ftevent-m<n>`, one cursor through both tables: (created_at, table, n), the
metrics of a moment before its events.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from api.errors import InvalidRequest
from api.services.fine_tuning_methods import METHOD_OF_TYPE, to_openai
from core import model_names
from core.models import Checkpoint, Job, JobEvent, JobStatus, Metric
from trainers.spec.results import NUM_TOKENS_METRIC

STATUS = {JobStatus.queued: "queued", JobStatus.running: "running", JobStatus.cancelling: "running",
          JobStatus.pausing: "running", JobStatus.paused: "paused", JobStatus.succeeded: "succeeded",
          JobStatus.failed: "failed", JobStatus.cancelled: "cancelled"}
LEVEL = {"info": "info", "warning": "warn", "error": "error"}
# OpenAI's metric names -> ours. Evaluation runs over the whole validation file, so it is also the "full" one.
METRICS = {"train_loss": "train/loss", "train_mean_token_accuracy": "train/mean_token_accuracy",
           "valid_loss": "eval/loss", "valid_mean_token_accuracy": "eval/mean_token_accuracy",
           "full_valid_loss": "eval/loss", "full_valid_mean_token_accuracy": "eval/mean_token_accuracy"}
NATIVE_PARAM = {"dataset_id": "training_file", "eval_dataset_id": "validation_file", "base_model": "model"}
EVENT_PREFIX = "ftevent-"


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def trained_tokens(session: Session, job: Job) -> int | None:
    """The last `train/num_tokens` the job reported (a cumulative count), or None."""
    stmt = select(Metric.values).where(Metric.job_id == job.id).order_by(Metric.step.desc()).limit(10)
    for values in session.scalars(stmt):
        if NUM_TOKENS_METRIC in values:
            return int(values[NUM_TOKENS_METRIC])
    return None


def _error(job: Job) -> dict[str, Any] | None:
    if job.status != JobStatus.failed or not job.error:
        return None
    param = job.error.get("param")
    return {"code": job.error.get("type", "internal_error"), "message": job.error.get("message", ""),
            "param": NATIVE_PARAM.get(param, param)}


def job_object(session: Session, job: Job, project_name: str) -> dict[str, Any]:
    """The `fine_tuning.job` object of a job whose type maps to a method."""
    method = METHOD_OF_TYPE[job.type]
    hyperparameters = to_openai(job.type, job.hyperparameters)
    config: dict[str, Any] = {"hyperparameters": hyperparameters}
    if method == "reinforcement":
        config["grader"] = job.reward  # the native reward spec the grader was translated into
    succeeded = job.status == JobStatus.succeeded
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at), "model": job.base_model,
        "fine_tuned_model": model_names.fine_tuned_model(job, project_name) if succeeded else None,
        "organization_id": job.project_id, "result_files": [], "status": STATUS[JobStatus(job.status)],
        "hyperparameters": {key: hyperparameters[key] for key in ("n_epochs", "batch_size",
                                                                  "learning_rate_multiplier")},
        "method": {"type": method, method: config},
        "training_file": job.dataset_id, "validation_file": job.eval_dataset_id,
        "trained_tokens": trained_tokens(session, job), "estimated_finish": unix(job.estimated_finish),
        "error": _error(job), "seed": job.seed, "suffix": job.suffix, "user_provided_suffix": job.suffix,
        "metadata": job.metadata_, "integrations": None,
    }


def _openai_metrics(values: dict[str, float]) -> dict[str, float]:
    return {name: values[ours] for name, ours in METRICS.items() if ours in values}


def checkpoint_object(checkpoint: Checkpoint, job: Job, project_name: str) -> dict[str, Any]:
    """The `fine_tuning.job.checkpoint` object of a checkpoint."""
    return {"id": checkpoint.id, "object": "fine_tuning.job.checkpoint", "created_at": unix(checkpoint.created_at),
            "fine_tuned_model_checkpoint": model_names.checkpoint_model(job, project_name, checkpoint.step),
            "fine_tuning_job_id": job.id, "step_number": checkpoint.step,
            "metrics": {"step": float(checkpoint.step), **_openai_metrics(checkpoint.metrics or {})}}


def checkpoints_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Checkpoint], bool]:
    """The job's checkpoints, newest (highest step) first; `after` is a checkpoint id."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after is not None:
        anchor = session.scalar(select(Checkpoint.step).where(Checkpoint.job_id == job.id, Checkpoint.id == after))
        if anchor is None:
            raise InvalidRequest(f"cursor {after[:64]!r} names no checkpoint of this job", param="after")
        stmt = stmt.where(Checkpoint.step < anchor)
    rows = list(session.scalars(stmt.order_by(Checkpoint.step.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _metrics_event(metric: Metric, job: Job) -> dict[str, Any]:
    values = metric.values or {}
    data = {"step": metric.step, "total_steps": job.total_steps, **_openai_metrics(values), **values}
    shown = [f"{name}={values[ours]:.4g}" for name, ours in (("training loss", "train/loss"),
                                                             ("validation loss", "eval/loss")) if ours in values]
    total = f"/{job.total_steps}" if job.total_steps else ""
    return {"id": f"{EVENT_PREFIX}m{metric.id}", "object": "fine_tuning.job.event",
            "created_at": unix(metric.created_at), "level": "info", "type": "metrics",
            "message": f"Step {metric.step}{total}" + (f": {', '.join(shown)}" if shown else ""), "data": data}


def _message_event(event: JobEvent) -> dict[str, Any]:
    message = event.message
    if event.type == "status":
        status = (event.data or {}).get("status", "")
        message = f"Job {status}: {message}" if status and status not in message else message
    return {"id": f"{EVENT_PREFIX}e{event.id}", "object": "fine_tuning.job.event",
            "created_at": unix(event.created_at), "level": LEVEL.get(event.level, "info"), "type": "message",
            "message": message, "data": event.data}


def _cursor(session: Session, job: Job, after: str) -> tuple[datetime, int, int]:
    """(created_at, table rank, row id) of the event `after` names: metrics rank 0, events 1."""
    table = after[len(EVENT_PREFIX):len(EVENT_PREFIX) + 1] if after.startswith(EVENT_PREFIX) else ""
    number = after[len(EVENT_PREFIX) + 1:]
    model = {"m": Metric, "e": JobEvent}.get(table)
    moment = None
    if model is not None and number.isdigit() and len(number) <= 18:
        moment = session.scalar(select(model.created_at).where(model.job_id == job.id, model.id == int(number)))
    if moment is None:
        raise InvalidRequest(f"cursor {after[:64]!r} names no event of this job", param="after")
    return moment, 0 if table == "m" else 1, int(number)


def _older(model: Any, rank: int, cursor: tuple[datetime, int, int]) -> Any:
    """Rows of `model` (table `rank`) ordered after `cursor` when listing newest first."""
    moment, cursor_rank, number = cursor
    if rank < cursor_rank:
        return model.created_at <= moment
    if rank > cursor_rank:
        return model.created_at < moment
    return or_(model.created_at < moment, and_(model.created_at == moment, model.id < number))


def events_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """The job's events and per-step metrics as `fine_tuning.job.event` objects, newest first."""
    cursor = _cursor(session, job, after) if after is not None else None
    merged: list[tuple[tuple[datetime, int, int], dict[str, Any]]] = []
    for rank, model in ((0, Metric), (1, JobEvent)):
        stmt = select(model).where(model.job_id == job.id)
        if cursor is not None:
            stmt = stmt.where(_older(model, rank, cursor))
        for row in session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)):
            shown = _metrics_event(row, job) if rank == 0 else _message_event(row)
            merged.append(((row.created_at, rank, row.id), shown))
    merged.sort(key=lambda item: item[0], reverse=True)
    return [shown for _, shown in merged[:limit]], len(merged) > limit
