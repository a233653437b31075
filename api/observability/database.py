"""What the database says at scrape time: jobs by status, the queue, running jobs' pace and leases, storage.

The API process never sees a worker, so every job figure is read from the jobs table when Prometheus
scrapes, in one short read-only transaction; any API process gives the same answer. The read runs on a
thread of its own with a deadline: a slow or unreachable database makes the scrape answer within
READ_TIMEOUT_SECONDS with `rlhf_scrape_error 1` (and the request metrics) instead of hanging or failing.
While a read that overran is still going, later scrapes wait on that same read rather than start more.
"""

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select, text

from core.db import engine_for
from core.lifecycle import LEASED_STATUSES
from core.models import Checkpoint, Dataset, Job, JobEvent, JobStatus, utcnow

log = logging.getLogger(__name__)
READ_TIMEOUT_SECONDS = 5.0  # half of Prometheus' default scrape_timeout


@dataclass(frozen=True)
class RunningJob:
    id: str
    type: str
    worker_id: str | None
    heartbeat_at: datetime | None
    current_step: int
    total_steps: int | None
    steps_per_second: float | None
    tokens_per_second: float | None


@dataclass
class Snapshot:
    """The rows the gauges are made of, as read in one transaction."""

    jobs: list[tuple[str, str, int]] = field(default_factory=list)  # (type, status, count)
    queued: int = 0
    oldest_queued_since: datetime | None = None  # when the longest-waiting queued job last entered the queue
    running: list[RunningJob] = field(default_factory=list)
    checkpoints: list[tuple[str, int, int]] = field(default_factory=list)  # (job type, count, bytes)
    datasets: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, count, rows)


def read_snapshot(conn: Connection) -> Snapshot:
    """Read every figure of a scrape on `conn` (the caller holds the transaction)."""
    snap = Snapshot()
    snap.jobs = [tuple(r) for r in conn.execute(
        select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status))]
    # A queued job waits since its latest status change (a requeue or a resume), or since it was created.
    entered = (select(func.max(JobEvent.created_at))
               .where(JobEvent.job_id == Job.id, JobEvent.type == "status").scalar_subquery())
    snap.queued, snap.oldest_queued_since = conn.execute(
        select(func.count(), func.min(func.coalesce(entered, Job.created_at)))
        .where(Job.status == JobStatus.queued.value)).one()
    snap.running = [RunningJob(*r) for r in conn.execute(
        select(Job.id, Job.type, Job.worker_id, Job.heartbeat_at, Job.current_step, Job.total_steps,
               Job.steps_per_second, Job.tokens_per_second)
        .where(Job.status.in_(LEASED_STATUSES)).order_by(Job.id))]
    snap.checkpoints = [tuple(r) for r in conn.execute(
        select(Job.type, func.count(), func.coalesce(func.sum(Checkpoint.size_bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id).group_by(Job.type))]
    snap.datasets = [tuple(r) for r in conn.execute(
        select(Dataset.kind, func.count(), func.coalesce(func.sum(Dataset.row_count), 0))
        .where(Dataset.status == "ready").group_by(Dataset.kind))]
    return snap


def read_database(url: str, timeout_seconds: float) -> Snapshot:
    """One read-only transaction on `url`'s engine; on Postgres each statement is cut off at the deadline."""
    engine = engine_for(url)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET TRANSACTION READ ONLY"))
            conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_seconds * 1000)}"))
        snap = read_snapshot(conn)
        conn.rollback()
    return snap


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def gauges(snap: Snapshot, now: datetime) -> Iterator[Metric]:
    """The gauges of one snapshot, ages measured to `now`."""
    jobs = GaugeMetricFamily("rlhf_jobs", "Jobs by type and status (every status of each type present).",
                             labels=["type", "status"])
    counts = {(type_, status): n for type_, status, n in snap.jobs}
    for type_ in sorted({type_ for type_, _ in counts}):
        for status in JobStatus:
            jobs.add_metric([type_, status.value], counts.get((type_, status.value), 0))
    yield jobs
    yield GaugeMetricFamily("rlhf_queue_depth", "Jobs waiting in the queue (status queued).", value=snap.queued)
    oldest = _seconds_since(snap.oldest_queued_since, now)
    yield GaugeMetricFamily("rlhf_queue_oldest_age_seconds", "How long the longest-waiting queued job has "
                            "waited since it entered the queue (0 with an empty queue).", value=oldest or 0.0)

    run_labels = ["job_id", "type"]
    step = GaugeMetricFamily("rlhf_job_current_step", "Optimizer steps done by each running job.", labels=run_labels)
    total = GaugeMetricFamily("rlhf_job_total_steps", "Optimizer steps each running job will take.",
                              labels=run_labels)
    steps_ps = GaugeMetricFamily("rlhf_job_steps_per_second", "Observed optimizer steps per second of each "
                                 "running job, once measured after its warm-up.", labels=run_labels)
    tokens_ps = GaugeMetricFamily("rlhf_job_tokens_per_second", "Observed training tokens per second of each "
                                  "running job, once measured after its warm-up.", labels=run_labels)
    job_age = GaugeMetricFamily("rlhf_job_heartbeat_age_seconds", "Seconds since each running job's worker "
                                "last renewed its lease.", labels=["job_id", "worker"])
    newest: dict[str, datetime] = {}
    for job in snap.running:
        labels = [job.id, job.type]
        step.add_metric(labels, job.current_step)
        if job.total_steps is not None:
            total.add_metric(labels, job.total_steps)
        if job.steps_per_second is not None:
            steps_ps.add_metric(labels, job.steps_per_second)
        if job.tokens_per_second is not None:
            tokens_ps.add_metric(labels, job.tokens_per_second)
        if job.heartbeat_at is not None and job.worker_id is not None:
            job_age.add_metric([job.id, job.worker_id], _seconds_since(job.heartbeat_at, now))
            if job.worker_id not in newest or job.heartbeat_at > newest[job.worker_id]:
                newest[job.worker_id] = job.heartbeat_at
    yield from (step, total, steps_ps, tokens_ps, job_age)
    worker_age = GaugeMetricFamily("rlhf_worker_heartbeat_age_seconds", "Seconds since each worker with a "
                                   "running job last renewed a lease (its newest heartbeat).", labels=["worker"])
    for worker, at in sorted(newest.items()):
        worker_age.add_metric([worker], _seconds_since(at, now))
    yield worker_age

    ckpt_count = GaugeMetricFamily("rlhf_checkpoints", "Stored checkpoints, by job type.", labels=["type"])
    ckpt_bytes = GaugeMetricFamily("rlhf_checkpoint_bytes", "Bytes of stored checkpoints (their archives), "
                                   "by job type.", labels=["type"])
    for type_, count, size in snap.checkpoints:
        ckpt_count.add_metric([type_], count)
        ckpt_bytes.add_metric([type_], size)
    yield from (ckpt_count, ckpt_bytes)
    ds_count = GaugeMetricFamily("rlhf_datasets", "Datasets ready for training, by kind.", labels=["kind"])
    ds_rows = GaugeMetricFamily("rlhf_dataset_rows", "Rows of the datasets ready for training, by kind.",
                                labels=["kind"])
    for kind, count, rows in snap.datasets:
        ds_count.add_metric([kind], count)
        ds_rows.add_metric([kind], rows)
    yield from (ds_count, ds_rows)


class DatabaseCollector(Collector):
    """Reads the database on each scrape, within READ_TIMEOUT_SECONDS; `rlhf_scrape_error` says if it could."""

    def __init__(self, database_url: str, timeout_seconds: float = READ_TIMEOUT_SECONDS) -> None:
        self.database_url, self.timeout_seconds = database_url, timeout_seconds
        self._lock = threading.Lock()
        self._read: Future[Snapshot] | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on the rows; nothing is read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            snap = self._current_read().result(timeout=self.timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - any failure is reported as a scrape error, never a 500
            log.warning("metrics: reading the database failed: %r", exc)
            snap = None
        if snap is not None:
            yield from gauges(snap, utcnow())
        yield GaugeMetricFamily("rlhf_scrape_error", "1 if the last scrape could not read the database "
                                "in time (its job, queue and storage gauges are then missing), else 0.",
                                value=0 if snap is not None else 1)
        yield GaugeMetricFamily("rlhf_scrape_duration_seconds", "Time this scrape spent reading the database.",
                                value=time.perf_counter() - started)

    def _current_read(self) -> Future[Snapshot]:
        """The read in flight, or a new one on a daemon thread (a hung read never holds the process open)."""
        with self._lock:
            if self._read is None or self._read.done():
                future: Future[Snapshot] = Future()

                def run() -> None:
                    try:
                        future.set_result(read_database(self.database_url, self.timeout_seconds))
                    except BaseException as exc:  # noqa: BLE001 - handed to the scrape waiting on it
                        future.set_exception(exc)

                self._read = future
                threading.Thread(target=run, name="metrics-db-read", daemon=True).start()
            return self._read
