"""Many live streams of one job against an API process with a deliberately small database pool.

Each stream must receive every metric after its own cursor, in order and once, then the terminal
status, while ordinary requests keep answering; no stream may hold a connection between polls.
"""

import threading

import httpx
import pytest
from sqlalchemy import func, select, text

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import claim_job, transition
from core.models import JobEvent, JobStatus, Metric
from core.notify import publish
from tests.e2e.e2e_support import Deployment
from tests.support import PG_ADMIN_URL, jsonl, parse_sse, preference_rows
from worker.reporting import JobReporter

pytestmark = pytest.mark.e2e

STREAMS = 24  # more than the pool (2) and the old default pool (5 + 10) together
STEPS = 30
STREAM_TIMEOUT = 120


@pytest.fixture
def api(settings, tmp_path):
    """Only the API process (no worker): the test itself writes what a training run would."""
    dep = Deployment(settings, tmp_path, DB_POOL_SIZE="2", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT_SECONDS="20")
    try:
        dep.start_api()
        yield dep
    finally:
        dep.stop()


class Follower(threading.Thread):
    """One SSE client on its own connection, reading the stream until it closes."""

    def __init__(self, dep: Deployment, job_id: str, last_event_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.dep, self.job_id, self.last_event_id = dep, job_id, last_event_id
        self.connected = threading.Event()
        self.status_code: int | None = None
        self.body, self.error = "", None

    def run(self) -> None:
        headers = dict(self.dep.client.headers) | ({"Last-Event-ID": self.last_event_id} if self.last_event_id else {})
        try:
            with httpx.Client(base_url=str(self.dep.client.base_url), headers=headers,
                              timeout=STREAM_TIMEOUT) as client:
                with client.stream("GET", f"/v1/jobs/{self.job_id}/stream") as r:
                    self.status_code = r.status_code
                    for chunk in r.iter_text():
                        self.connected.set()
                        self.body += chunk
        except httpx.HTTPError as exc:  # reported by the test, not as a thread's traceback
            self.error = repr(exc)
        finally:
            self.connected.set()

    @property
    def frames(self) -> list[dict]:
        return parse_sse(self.body)


def idle_in_transaction(database: str) -> int:
    from sqlalchemy import create_engine

    engine = create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        count = conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                                 "AND state LIKE 'idle in transaction%'"), {"db": database})
    engine.dispose()
    return count


def cursor_after_step(settings, job_id: str, step: int) -> str:
    """The SSE id a client holds after reading up to `step` (its Last-Event-ID on reconnecting)."""
    with session_scope(settings.database_url) as session:
        event_id = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
        metric_id = session.scalar(select(Metric.id).where(Metric.job_id == job_id, Metric.step == step))
    return f"{event_id}-{metric_id}"


def test_many_streams_on_a_small_pool_each_get_everything(api, settings):
    client = api.client
    dataset = client.post("/v1/datasets", data={"kind": "preference"},
                          files={"file": ("d.jsonl", jsonl(preference_rows(4)))}).json()["id"]
    job_id = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                           "dataset_id": dataset}).json()["id"]
    with session_scope(settings.database_url) as session:
        lease = claim_job(session, job_id, "w1")
    reporter = JobReporter(url=settings.database_url, lease=lease, broker_url=settings.celery_broker_url,
                           store=ArtifactStore(settings.artifacts_dir))

    def write(step: int) -> None:
        reporter.on_metrics(step, {"train/loss": 1.0 / step})
        reporter.flush()

    for step in range(1, 6):
        write(step)
    resume_at = cursor_after_step(settings, job_id, 3)
    # Half connect before the run goes on, some of them resuming after step 3; the rest join midway.
    early = [Follower(api, job_id, resume_at if i % 4 == 0 else None) for i in range(STREAMS // 2)]
    late = [Follower(api, job_id, resume_at if i % 4 == 0 else None) for i in range(STREAMS - len(early))]
    for f in early:
        f.start()
    for step in range(6, STEPS + 1):
        if step == STEPS // 2:
            for f in late:
                f.start()
        write(step)
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/events"):
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text)

    for f in early + late:
        assert f.connected.wait(60), "a stream never started"
    assert [f.status_code for f in early + late] == [200] * STREAMS
    if settings.database_url.startswith("postgresql"):
        # Every stream is open and waiting for news: none of them may hold a transaction.
        assert idle_in_transaction(settings.database_url.rsplit("/", 1)[1]) == 0
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.succeeded)
    publish(settings.celery_broker_url, job_id)

    for f in early + late:
        f.join(STREAM_TIMEOUT)
        assert not f.is_alive(), "a stream did not close after the terminal status"
        assert f.error is None, f.error
    for f in early + late:
        frames = f.frames
        steps = [fr["data"]["step"] for fr in frames if fr["event"] == "metrics"]
        first = 4 if f.last_event_id else 1
        assert steps == list(range(first, STEPS + 1)), (f.last_event_id, steps)
        assert frames[-1]["event"] == "status" and frames[-1]["data"]["status"] == "succeeded"
        ids = [tuple(int(p) for p in fr["id"].split("-")) for fr in frames]
        assert ids == sorted(set(ids)), "ids go backwards or repeat"


READERS = 64


def test_many_concurrent_readers_on_the_default_pool_all_get_answers(settings, tmp_path):
    """More clients at once than the pool has connections and the API has threads: none of them fails."""
    dep = Deployment(settings, tmp_path)
    try:
        dep.start_api()
        dataset = dep.client.post("/v1/datasets", data={"kind": "preference"},
                                  files={"file": ("d.jsonl", jsonl(preference_rows(4)))}).json()["id"]
        job_id = dep.client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                                   "dataset_id": dataset}).json()["id"]
        paths = [f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics", "/v1/jobs", f"/v1/datasets/{dataset}"]
        start = threading.Barrier(READERS)
        codes: list[int] = []

        def read() -> None:
            with httpx.Client(base_url=str(dep.client.base_url), headers=dict(dep.client.headers),
                              timeout=STREAM_TIMEOUT) as client:
                client.get("/healthz")  # connected before they all start together
                start.wait()
                for path in paths * 3:
                    codes.append(client.get(path).status_code)

        readers = [threading.Thread(target=read) for _ in range(READERS)]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
    finally:
        dep.stop()
    assert len(codes) == READERS * len(paths) * 3
    assert {code: codes.count(code) for code in set(codes)} == {200: len(codes)}
