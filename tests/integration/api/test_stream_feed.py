"""The shared feed behind live streams, driven directly on both backends: one feed per job however
many streams follow it, gone with the last of them, and a stream too slow for its queue catching
up from its own cursor without losing or repeating anything."""

import asyncio

import pytest

from api.services import feeds
from api.services.stream import hub_of, job_stream
from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import transition
from core.models import JobStatus
from core.notify import publish
from tests.support import parse_sse
from worker.reporting import JobReporter


@pytest.fixture
def reporter(claimed_job, settings) -> JobReporter:
    return JobReporter(url=settings.database_url, lease=claimed_job, broker_url=settings.celery_broker_url,
                       store=ArtifactStore(settings.artifacts_dir))


async def connected() -> bool:
    return False


def write(reporter: JobReporter, step: int) -> None:
    reporter.on_metrics(step, {"train/loss": 1.0 / step})
    reporter.flush()


def finish(settings, job_id: str) -> None:
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.succeeded)
    publish(settings.celery_broker_url, job_id)


async def until(predicate, what: str) -> None:
    for _ in range(600):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {what}")


async def drain(stream) -> str:
    return "".join([frame async for frame in stream])


def metric_steps(body: str) -> list[int]:
    return [f["data"]["step"] for f in parse_sse(body) if f["event"] == "metrics"]


def test_streams_of_a_job_share_one_feed_that_ends_with_them(settings, reporter):
    job_id = reporter.job_id

    async def scenario() -> tuple[list[str], int, int]:
        hub = hub_of(settings)
        streams = [job_stream(settings=settings, job_id=job_id, last_event_id=None, is_disconnected=connected)
                   for _ in range(5)]
        for stream in streams:
            await stream.__anext__()  # the retry hint
        reading = [asyncio.create_task(drain(stream)) for stream in streams]
        await until(lambda: job_id in hub.feeds and len(hub.feeds[job_id].subscriptions) == 5, "joined")
        feeds_while_open = len(hub.feeds)
        for step in range(1, 4):
            await asyncio.to_thread(write, reporter, step)
        await asyncio.to_thread(finish, settings, job_id)
        bodies = await asyncio.wait_for(asyncio.gather(*reading), 60)
        return bodies, feeds_while_open, len(hub.feeds)

    bodies, feeds_while_open, feeds_after = asyncio.run(scenario())
    assert (feeds_while_open, feeds_after) == (1, 0)
    for body in bodies:
        assert metric_steps(body) == [1, 2, 3]
        assert parse_sse(body)[-1]["data"]["status"] == "succeeded"


def test_a_stream_too_slow_for_its_queue_catches_up_from_its_own_cursor(settings, reporter, monkeypatch):
    monkeypatch.setattr(feeds, "MAX_PENDING", 2)
    job_id = reporter.job_id

    async def scenario() -> tuple[str, str, bool]:
        hub = hub_of(settings)
        slow = job_stream(settings=settings, job_id=job_id, last_event_id=None, is_disconnected=connected)
        fast = job_stream(settings=settings, job_id=job_id, last_event_id=None, is_disconnected=connected)
        head = [await slow.__anext__(), await slow.__anext__()]  # the retry hint, then the job's history
        await fast.__anext__()
        fast_reading = asyncio.create_task(drain(fast))
        await until(lambda: len(hub.feeds[job_id].subscriptions) == 2, "joined")
        for step in range(1, 9):  # one feed batch per step, while the slow stream reads nothing
            await asyncio.to_thread(write, reporter, step)
            metric_id = await asyncio.to_thread(step_id, settings, job_id, step)
            await until(lambda at=metric_id: hub.feeds[job_id].cursor[1] >= at, f"step {step} read by the feed")
        lagged = any(s.lags for s in hub.feeds[job_id].subscriptions)
        await asyncio.to_thread(finish, settings, job_id)
        slow_body = "".join(head) + await asyncio.wait_for(drain(slow), 60)
        return slow_body, await asyncio.wait_for(fast_reading, 60), lagged

    slow_body, fast_body, lagged = asyncio.run(scenario())
    assert lagged, "the slow stream's queue never overflowed"
    for body in (slow_body, fast_body):
        assert metric_steps(body) == list(range(1, 9))
        ids = [tuple(int(p) for p in f["id"].split("-")) for f in parse_sse(body)]
        assert ids == sorted(set(ids))
        assert parse_sse(body)[-1]["data"]["status"] == "succeeded"


def step_id(settings, job_id: str, step: int) -> int:
    from sqlalchemy import select

    from core.models import Metric

    with session_scope(settings.database_url) as session:
        return session.scalar(select(Metric.id).where(Metric.job_id == job_id, Metric.step == step))


def test_an_idle_stream_sends_keep_alives_and_ends_when_its_client_has_gone(settings, reporter):
    quick = settings.model_copy(update={"stream_keepalive_seconds": 0.2})
    gone = False

    async def disconnected() -> bool:
        return gone

    async def scenario() -> tuple[list[str], int]:
        nonlocal gone
        stream = job_stream(settings=quick, job_id=reporter.job_id, last_event_id=None, is_disconnected=disconnected)
        frames = [await stream.__anext__(), await stream.__anext__(), await stream.__anext__()]
        gone = True
        frames += [frame async for frame in stream]  # ends at its next idle check
        return frames, len(hub_of(quick).feeds)

    frames, feeds_left = asyncio.run(scenario())
    assert frames[0].startswith("retry:") and "event: status" in frames[1]
    assert frames[2:] == [": keep-alive\n\n"] and feeds_left == 0
