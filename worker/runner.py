"""The training child process: `python -m worker.runner <job_id> <worker_id> <attempt>`.

Reads the job and its data, resolves the model, runs the trainer with database-backed callbacks,
and records the outcome that `worker.outcomes` maps the run's end to (whose fault a failure is goes
into `error.type`). A job of several processes runs the same program as each of its ranks under
torchrun, which the child starts and waits for (`launch`, `worker.torchrun`); rank 0 does what the
single process does, the other ranks train on what it decided and write nothing.

Everything the run writes is fenced by the lease its worker claimed (worker id and attempt): a run
whose job was handed on stops at its next write or stop poll and exits with LEASE_LOST_EXIT,
having recorded nothing. A cancel or pause request stops the run at its next poll with a
checkpoint; the job then ends cancelled, or paused to be resumed from that checkpoint.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.artifacts import open_store
from core.db import retry_on_outage, session_scope
from core.job_config import job_config
from core.lifecycle import InvalidTransition, Lease, LeaseLost, hold, leased_status, transition
from core.model_refs import ModelRefError, checkpoint_model_dir, resolve_model_ref
from core.models import Checkpoint, DatasetRow, Job, JobStatus
from core.notify import publish
from core.settings import Settings, get_settings
from trainers.spec.results import RunResult
from trainers.spec.rewards import model_checkpoints, reward_spec_adapter
from worker import outcomes, torchrun
from worker.outcomes import Outcome
from worker.reporting import JobReporter
from worker.torchrun import Plan, RankFailed

if TYPE_CHECKING:  # both import torch, which only the training process loads
    import trainers
    from trainers.distributed.ranks import Ranks

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
    record_outcome(settings, lease, lambda session: Outcome(target, message, error))


def finish_run(settings: Settings, lease: Lease, result: RunResult | None) -> None:
    """Record how the trainer ended (`result`), or that the run was stopped before it started (None).

    A stopped run ends as its job asks when the outcome is recorded: paused if it is pausing, else
    cancelled; the status and the latest checkpoint are read in the transaction that records it,
    under the lease's lock, so a cancel that overrides a pause meanwhile is never lost. The
    checkpoint of the last step of a job that ends is marked final in the same transaction.
    """
    def decide(session: Session) -> Outcome:
        asked = leased_status(session, lease)
        latest = session.execute(select(Checkpoint.id, Checkpoint.step).where(Checkpoint.job_id == lease.job_id)
                                 .order_by(Checkpoint.step.desc()).limit(1)).first()
        checkpoint = (latest.id, latest.step) if latest else None
        if result is None:
            return outcomes.stopped_before_start(asked, checkpoint)
        outcome = outcomes.finished(result, asked, checkpoint)
        if outcome.status != JobStatus.paused:  # a paused job has no result yet: its run goes on
            session.execute(update(Checkpoint).where(Checkpoint.job_id == lease.job_id)
                            .values(is_final=Checkpoint.step == result.step))
        return outcome

    record_outcome(settings, lease, decide)


def record_outcome(settings: Settings, lease: Lease, decide: Callable[[Session], Outcome]) -> None:
    """Record the outcome `decide` reads from the database, if the lease still holds the job; raises LeaseLost."""
    def record() -> None:
        with session_scope(settings.database_url) as session:
            hold(session, lease)
            target, message, error = decide(session)
            # A paused job holds no worker: a resume queues it for any.
            values = {"worker_id": None} if target == JobStatus.paused else None
            transition(session, lease.job_id, target, message=message, error=error, where=lease.conditions(),
                       values=values)

    try:
        retry_on_outage(record, grace_seconds=settings.db_outage_grace_seconds, what="recording the outcome")
    except InvalidTransition as exc:
        log.warning("outcome of %s not recorded: %s", lease.job_id, exc)
    publish(settings.celery_broker_url, lease.job_id)


def training_data(url: str, datasets: tuple[str | None, str | None, str | None]) -> trainers.TrainingData:
    import trainers

    train, evaluation, ptx = (load_rows(url, dataset_id) for dataset_id in datasets)
    return trainers.TrainingData(train=train, eval=evaluation, ptx=ptx)


def train(settings: Settings, lease: Lease, ranks: Ranks | None = None) -> None:
    """Train the job as one process, or as one rank of several (`ranks`).

    Rank 0 (or the only process) resolves the model, finds the checkpoint to resume from, reports
    through a `JobReporter` and records the outcome; on several processes it broadcasts that plan,
    or None when the job ends before training, and a failure it understood raises `RankFailed`
    for the launching child to record. The other ranks write nothing: they train on rank 0's plan
    with callbacks that report nothing.
    """
    import torch

    import trainers
    from trainers.distributed.ranks import Ranks
    from trainers.spec.callbacks import Callbacks
    from trainers.spec.errors import NumericalError, UserError

    ranks = ranks or Ranks()
    threads = rank_threads(settings) if ranks.distributed else settings.torch_threads
    if threads:
        torch.set_num_threads(threads)
    url = settings.database_url
    if not ranks.is_main:
        plan = ranks.broadcast(None)
        if plan is not None:
            try:
                trainers.run(plan.config, training_data(url, plan.datasets), Callbacks(),
                             resume_from=plan.resume_from)
            except Exception as exc:
                raise RankFailed(outcomes.of_exception(exc, plan.model)) from exc
        return None
    with session_scope(url) as session:
        if leased_status(session, lease) != JobStatus.running:  # cancelling or pausing already
            ranks.broadcast(None)
            return finish_run(settings, lease, None)
        job = session.get(Job, lease.job_id)
        try:
            model = resolve_model_ref(job.base_model, settings=settings, session=session,
                                      project_id=job.project_id, download=True)
        except ModelRefError as exc:
            ranks.broadcast(None)
            return finish(settings, lease, *outcomes.of_exception(exc))
    store = open_store(settings)
    reporter = JobReporter(url=url, lease=lease, store=store, broker_url=settings.celery_broker_url,
                           grace_seconds=settings.db_outage_grace_seconds)
    config = job_config(job, base_model=model.location,
                        reward_model_dirs=reward_model_dirs(settings, job) if job.reward is not None else None,
                        reward_function_modules=settings.reward_function_modules)
    resume = reporter.latest_checkpoint()
    if resume is not None:
        reporter.on_event("info", f"resuming from the checkpoint at step {resume.step}")
    plan = Plan(config=config, model=model, datasets=(job.dataset_id, job.eval_dataset_id, job.ptx_dataset_id),
                resume_from=str(store.local_dir(resume.artifact_key)) if resume else None)
    ranks.broadcast(plan)
    try:
        result = trainers.run(config, training_data(url, plan.datasets), reporter, resume_from=plan.resume_from)
    except (UserError, NumericalError, torch.OutOfMemoryError) as exc:
        reporter.flush()
        outcome = outcomes.of_exception(exc, model)
        if ranks.distributed:
            raise RankFailed(outcome) from exc
        return finish(settings, lease, *outcome)
    reporter.flush()
    finish_run(settings, lease, result)
    return None


def rank_threads(settings: Settings) -> int:
    """CPU threads of each rank of a job of several processes: TORCH_THREADS, else one (as torchrun's default)."""
    return settings.torch_threads or 1


def job_processes(settings: Settings, lease: Lease) -> int:
    """How many processes the job trains on."""
    with session_scope(settings.database_url) as session:
        return session.get(Job, lease.job_id).processes or 1


def launch(settings: Settings, lease: Lease, processes: int) -> int:
    """Run the job as `processes` ranks under torchrun; record the first failed rank's outcome.

    Returns:
        The exit status: 0 once an outcome is recorded (by rank 0 or here), LEASE_LOST_EXIT if rank 0
        lost its lease, else torchrun's (no rank said why it failed: the worker records the
        failure with the standard error's tail).
    """
    shortfall = torchrun.device_shortfall(processes)
    if shortfall is not None:
        finish(settings, lease, *shortfall)
        return 0
    code, report = torchrun.run_ranks(lease, processes, rank_threads(settings))
    if code == 0 or report is None:
        return code if code >= 0 else 128 - code
    if report.outcome is None:
        return LEASE_LOST_EXIT
    log.error("job %s: rank %s failed: %s", lease.job_id, report.rank, report.outcome.message)
    finish(settings, lease, *report.outcome)
    return 0


def rank_main(settings: Settings, lease: Lease) -> int:
    """One rank under torchrun: join the others, train; a failure is reported to the child, never recorded."""
    from trainers.distributed.ranks import init_ranks

    ranks = init_ranks()
    try:
        train(settings, lease, ranks)
    except LeaseLost as exc:
        log.warning("rank %s stopped, the run lost its lease: %s", ranks.rank, exc)
        torchrun.report(ranks, None)
        return LEASE_LOST_EXIT
    except RankFailed as failure:
        log.error("rank %s of job %s failed", ranks.rank, lease.job_id, exc_info=failure.__cause__)
        torchrun.report(ranks, failure.outcome)
        return 1
    except Exception as exc:  # anything unforeseen is ours, not the user's
        log.exception("rank %s of job %s failed", ranks.rank, lease.job_id)
        torchrun.report(ranks, outcomes.of_exception(exc))
        return 1
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    """Run the job: `train` on one process, `launch` its ranks on several, or `rank_main` as a rank.

    Returns:
        The exit status: LEASE_LOST_EXIT if the job was handed on, else 0 (or, for a job of
        several processes whose ranks failed without saying why, torchrun's).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lease = Lease(job_id=argv[1], worker_id=argv[2], attempt=int(argv[3]))
    settings = get_settings()
    if torchrun.in_rank():
        return rank_main(settings, lease)
    try:
        try:
            processes = job_processes(settings, lease)
            if processes > 1:
                return launch(settings, lease, processes)
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
