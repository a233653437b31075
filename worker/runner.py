"""The training child process: `python -m worker.runner <job_id> <worker_id> <attempt>`.

Reads the job and its data, resolves the model, runs the trainer with database-backed callbacks,
and records the outcome that `worker.outcomes` maps the run's end to (whose fault a failure is goes
into `error.type`). Everything it writes is fenced by the lease its worker claimed (worker id and
attempt): a run whose job was handed on stops at its next write or cancel poll and exits with
LEASE_LOST_EXIT, having recorded nothing.
"""

import logging
import sys

from sqlalchemy import select

from core.artifacts import open_store
from core.db import retry_on_outage, session_scope
from core.job_config import job_config
from core.lifecycle import InvalidTransition, Lease, LeaseLost, hold, leased_status, transition
from core.model_refs import ModelRefError, checkpoint_model_dir, resolve_model_ref
from core.models import Checkpoint, DatasetRow, Job, JobStatus
from core.notify import publish
from core.settings import Settings, get_settings
from trainers.spec.rewards import model_checkpoints, reward_spec_adapter
from worker import outcomes
from worker.reporting import JobReporter

log = logging.getLogger("worker.runner")
LEASE_LOST_EXIT = 3  # the job was handed on: nothing recorded, nothing for the worker to record


def load_rows(url: str, dataset_id: str | None) -> list[dict] | None:
    if dataset_id is None:
        return None
    with session_scope(url) as session:
        return list(session.scalars(select(DatasetRow.data).where(DatasetRow.dataset_id == dataset_id)
                                    .order_by(DatasetRow.idx)))


def reward_model_dirs(settings: Settings, job: Job) -> dict[str, str]:
    """Checkpoint id -> model directory of each reward model the job's reward names."""
    store = open_store(settings)
    ids = model_checkpoints(reward_spec_adapter.validate_python(job.reward))
    with session_scope(settings.database_url) as session:
        checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.id.in_(ids))).all()
        return {c.id: str(checkpoint_model_dir(store, c)) for c in checkpoints}


def finish(settings: Settings, lease: Lease, target: JobStatus, message: str,
           error: dict | None = None) -> None:
    """Record the run's outcome if its lease still holds the job; raises LeaseLost otherwise."""
    def record() -> None:
        with session_scope(settings.database_url) as session:
            hold(session, lease)
            transition(session, lease.job_id, target, message=message, error=error, where=lease.conditions())

    try:
        retry_on_outage(record, grace_seconds=settings.db_outage_grace_seconds, what="recording the outcome")
    except InvalidTransition as exc:
        log.warning("outcome of %s not recorded: %s", lease.job_id, exc)
    publish(settings.celery_broker_url, lease.job_id)


def train(settings: Settings, lease: Lease) -> None:
    import torch

    import trainers
    from trainers.spec.errors import NumericalError, UserError

    url, job_id = settings.database_url, lease.job_id
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    with session_scope(url) as session:
        if leased_status(session, lease) == JobStatus.cancelling:
            return finish(settings, lease, *outcomes.cancelled_before_start())
        job = session.get(Job, job_id)
        try:
            model = resolve_model_ref(job.base_model, settings=settings, session=session,
                                      project_id=job.project_id, download=True)
        except ModelRefError as exc:
            return finish(settings, lease, *outcomes.of_exception(exc))
    store = open_store(settings)
    reporter = JobReporter(url=url, lease=lease, store=store, broker_url=settings.celery_broker_url,
                           grace_seconds=settings.db_outage_grace_seconds)
    data = trainers.TrainingData(train=load_rows(url, job.dataset_id), eval=load_rows(url, job.eval_dataset_id),
                                 ptx=load_rows(url, job.ptx_dataset_id))
    config = job_config(job, base_model=model.location,
                        reward_model_dirs=reward_model_dirs(settings, job) if job.reward is not None else None,
                        reward_function_modules=settings.reward_function_modules)
    resume = reporter.latest_checkpoint()
    if resume is not None:
        reporter.on_event("info", f"resuming from the checkpoint at step {resume.step}")
    try:
        result = trainers.run(config, data, reporter,
                              resume_from=store.local_dir(resume.artifact_key) if resume else None)
    except (UserError, NumericalError, torch.OutOfMemoryError) as exc:
        reporter.flush()
        return finish(settings, lease, *outcomes.of_exception(exc, model))
    reporter.flush()
    reporter.mark_final(result.step)
    finish(settings, lease, *outcomes.finished(result))


def main(argv: list[str]) -> int:
    """Run `train`; returns the exit status: LEASE_LOST_EXIT if the job was handed on, else 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lease = Lease(job_id=argv[1], worker_id=argv[2], attempt=int(argv[3]))
    settings = get_settings()
    try:
        try:
            train(settings, lease)
        except LeaseLost:
            raise
        except Exception as exc:  # anything unforeseen is ours, not the user's
            log.exception("job %s failed", lease.job_id)
            finish(settings, lease, *outcomes.of_exception(exc))
    except LeaseLost as exc:
        log.warning("run stopped, it lost its lease: %s; the job's current holder carries on", exc)
        return LEASE_LOST_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
