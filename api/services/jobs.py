"""Job creation (validated, idempotent, enqueued after commit), listing, cancellation, pause and resume."""

import hashlib
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from celery import Celery
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable, param_of
from api.schemas import JobCreate
from api.services import rewards
from api.services.paging import newest_first_page
from core.job_config import job_config
from core.lifecycle import InvalidTransition, transition
from core.model_refs import ModelRefError, resolve_model_ref
from core.models import TERMINAL_STATUSES, Dataset, Job, JobStatus, new_id
from core.notify import publish
from core.queue import enqueue_job, mark_enqueued, withdraw_job
from core.settings import Settings
from trainers.spec.config import JOB_MODELS_BY_TYPE
from trainers.spec.rewards import reward_spec_adapter

log = logging.getLogger(__name__)

def _request_hash(body: JobCreate, suffix: str | None = None) -> str:
    request = body.model_dump(mode="json", exclude_unset=True) | ({"suffix": suffix} if suffix is not None else {})
    canonical = json.dumps(request, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_dataset(session: Session, project_id: str, dataset_id: str, kind: str, param: str,
                   also: tuple[str, ...] = ()) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    # A dataset still `uploading` (or being deleted) is not there yet (or any more).
    if dataset is None or dataset.project_id != project_id or dataset.status != "ready":
        raise NotFound(f"no dataset with id {dataset_id!r}", param=param)
    if dataset.kind != kind and dataset.kind not in also:
        needed = " or ".join((kind, *also))
        raise InvalidRequest(
            f"dataset {dataset_id} is a {dataset.kind} dataset; this job needs a {needed} dataset",
            param=param)
    return dataset


def _check_job_config(job: Job) -> None:
    """Convert the job as the worker will, for the trainers' rules that span several fields."""
    try:
        job_config(job)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = param_of(tuple(error["loc"]), error["type"])
        raise InvalidRequest(f"{param}: {error['msg']}", param=param) from exc


def _replay(session: Session, project_id: str, key: str, request_hash: str) -> Job | None:
    existing = session.scalar(select(Job).where(Job.project_id == project_id, Job.idempotency_key == key))
    if existing is not None and existing.request_hash != request_hash:
        raise Conflict("this Idempotency-Key was used with a different request body",
                       param="Idempotency-Key")
    return existing


def create(*, session: Session, celery: Celery, settings: Settings, project_id: str, body: JobCreate,
           idempotency_key: str | None, registry: Mapping[str, Any], job_id: str | None = None,
           suffix: str | None = None) -> tuple[Job, bool]:
    """Validate and store a job (with `job_id` and model-name `suffix` when given), then enqueue it. Returns
    the job and whether it is new."""
    request_hash = _request_hash(body, suffix)
    if idempotency_key and (job := _replay(session, project_id, idempotency_key, request_hash)):
        return job, False
    if body.processes > settings.worker_devices:
        raise InvalidRequest(
            f"processes: this job asks for {body.processes} processes, but each worker has "
            f"{settings.worker_devices} devices (WORKER_DEVICES); one job runs on one worker's node",
            param="processes")
    kind, also = JOB_MODELS_BY_TYPE[body.type].dataset_kind, JOB_MODELS_BY_TYPE[body.type].also_reads
    _check_dataset(session, project_id, body.dataset_id, kind, "dataset_id", also)
    if body.eval_dataset_id:
        _check_dataset(session, project_id, body.eval_dataset_id, kind, "eval_dataset_id", also)
    try:
        resolve_model_ref(body.base_model, settings=settings, session=session, project_id=project_id)
    except ModelRefError as exc:
        raise InvalidRequest(str(exc), param="base_model") from exc
    ptx_dataset_id = getattr(body, "ptx_dataset_id", None)
    if body.type == "ppo":
        if body.hyperparameters.ptx_coef > 0 and ptx_dataset_id is None:
            raise InvalidRequest("hyperparameters.ptx_coef > 0 needs a ptx_dataset_id (a text dataset)",
                                 param="ptx_dataset_id")
        if ptx_dataset_id is not None and body.hyperparameters.ptx_coef == 0:
            raise InvalidRequest("ptx_dataset_id is only read when hyperparameters.ptx_coef > 0",
                                 param="hyperparameters.ptx_coef")
    if ptx_dataset_id is not None:
        _check_dataset(session, project_id, ptx_dataset_id, "text", "ptx_dataset_id")
    reward = getattr(body, "reward", None)
    if reward is not None:
        rewards.check_spec(reward, registry)
        rewards.check_reward_models(session, project_id, reward)
        rewards.check_rows(session, reward, body.dataset_id, "dataset_id")
        if body.eval_dataset_id:
            rewards.check_rows(session, reward, body.eval_dataset_id, "eval_dataset_id")

    job = Job(
        id=job_id or new_id("job"), suffix=suffix,
        project_id=project_id, type=body.type, name=body.name, base_model=body.base_model, dataset_id=body.dataset_id,
        eval_dataset_id=body.eval_dataset_id, ptx_dataset_id=ptx_dataset_id,
        hyperparameters=body.hyperparameters.model_dump(mode="json"),
        lora=body.lora.model_dump(mode="json") if body.lora else None,
        reward=reward_spec_adapter.dump_python(reward, mode="json") if reward is not None else None,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        processes=body.processes, strategy=body.strategy,
        metadata_=body.metadata, idempotency_key=idempotency_key, request_hash=request_hash,
        status=JobStatus.queued,
    )
    _check_job_config(job)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        session.rollback()
        if idempotency_key and (job := _replay(session, project_id, idempotency_key, request_hash)):
            return job, False
        raise
    try:
        enqueue_job(celery, job.id)
    except Exception as exc:  # the broker is down: take the job back, so a retry starts clean
        log.warning("could not enqueue job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()
        raise ServiceUnavailable("the task queue is unreachable; nothing was created, retry later",
                                 headers={"Retry-After": "5"}) from exc
    try:
        mark_enqueued(session, job.id, attempt=0)
        session.commit()
    except SQLAlchemyError:  # the job was sent: without its mark, a worker only sends it once more
        session.rollback()
        log.warning("could not mark job %s as sent", job.id, exc_info=True)
    return job, True


def list_page(*, session: Session, project_id: str, limit: int, after: str | None, status: str | None,
              type_: str | None) -> tuple[list[Job], bool]:
    """The project's jobs, newest first, optionally filtered."""
    stmt = select(Job).where(Job.project_id == project_id)
    if status:
        stmt = stmt.where(Job.status == status)
    if type_:
        stmt = stmt.where(Job.type == type_)
    return newest_first_page(session, stmt, Job, project_id=project_id, limit=limit, after=after)


def cancel(*, session: Session, settings: Settings, celery: Celery, job: Job) -> Job:
    """Cancel a queued or paused job at once; ask a running (or pausing) one to stop at its next step."""
    # A paused job holds no worker, so nothing has to stop; any unfinished job may be cancelled.
    return _stop(session=session, settings=settings, celery=celery, job=job, verb="cancel", past="cancelled",
                 stopping=JobStatus.cancelling, stopped=JobStatus.cancelled,
                 unchanged={JobStatus.cancelling}, at_once={JobStatus.queued, JobStatus.paused},
                 stoppable={None, *(set(JobStatus) - TERMINAL_STATUSES)})  # None: the status read back as gone


def _stop(*, session: Session, settings: Settings, celery: Celery, job: Job, verb: str, past: str,
          stopping: JobStatus, stopped: JobStatus, unchanged: set[JobStatus], at_once: set[JobStatus],
          stoppable: set[JobStatus | None]) -> Job:
    """Move `job` to `stopped` when it holds no worker (its status in `at_once`), else to `stopping` for
    its run to act on at its next step; a job already in `unchanged` is returned as it is, and one
    whose status is not `stoppable` when the move fails is a 409 (otherwise it is tried again)."""
    for _ in range(3):  # the job may start running between our read and our write
        session.refresh(job)
        if job.status in unchanged:
            return job
        target = stopped if job.status in at_once else stopping
        try:
            transition(session, job.id, target, message=f"{verb} requested")
        except InvalidTransition as exc:
            session.rollback()
            if exc.current not in stoppable:
                raise Conflict(f"job {job.id} is {exc.current} and cannot be {past}", param="job_id") from exc
            continue
        session.commit()
        if target == stopped:
            _withdraw(celery, job.id)
        publish(settings.celery_broker_url, job.id)
        session.refresh(job)
        return job
    raise Conflict(f"job {job.id} changed status while being {past}; retry", param="job_id")


def _withdraw(celery: Celery, job_id: str) -> None:
    try:
        withdraw_job(celery, job_id)
    except Exception:  # a message left behind is dropped by the worker that takes it (the job is not queued)
        log.warning("could not withdraw the queued message of %s", job_id, exc_info=True)


def pause(*, session: Session, settings: Settings, celery: Celery, job: Job) -> Job:
    """Pause a queued job at once; ask a running one to checkpoint and stop at its next step."""
    return _stop(session=session, settings=settings, celery=celery, job=job, verb="pause", past="paused",
                 stopping=JobStatus.pausing, stopped=JobStatus.paused,
                 unchanged={JobStatus.pausing, JobStatus.paused}, at_once={JobStatus.queued},
                 stoppable={JobStatus.queued, JobStatus.running})


def resume(*, session: Session, settings: Settings, celery: Celery, job: Job) -> Job:
    """Queue a paused job again; its next run continues from its latest checkpoint."""
    # Cleared outbox mark in the same commit as the move: if the send below fails, the workers'
    # outbox pass sends it (worker.outbox.send_unsent), as for any queued job never marked as sent.
    try:
        transition(session, job.id, JobStatus.queued, message="resume requested",
                   values={"worker_id": None, "enqueued_at": None})
    except InvalidTransition as exc:
        session.rollback()
        raise Conflict(f"job {job.id} is {exc.current} and cannot be resumed; only a paused job can",
                       param="job_id") from exc
    session.commit()
    session.refresh(job)
    try:
        # Sent as a requeue is: the message id counts the runs so far (core.queue.task_id).
        enqueue_job(celery, job.id, attempt=job.attempts)
        mark_enqueued(session, job.id, attempt=job.attempts)
        session.commit()
    except Exception:  # the broker is away, or the mark was not written: the outbox sends it later
        session.rollback()
        log.warning("could not send the resumed job %s now; the outbox will", job.id, exc_info=True)
    publish(settings.celery_broker_url, job.id)
    session.refresh(job)
    return job
