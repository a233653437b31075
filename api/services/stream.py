"""Live job stream as Server-Sent Events, resumable with Last-Event-ID.

Two tables feed the stream - `job_events` (status, event, checkpoint) and `metrics` - so an event id
is the pair of cursors `<last job_event id>-<last metric id>`. The database is the source of truth;
the stream polls it and closes once the job is terminal and everything has been sent.
"""

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidRequest
from core.db import session_scope
from core.models import TERMINAL_STATUSES, Checkpoint, Job, JobEvent, Metric
from core.notify import Waiter
from core.settings import Settings

FETCH_LIMIT = 500


def parse_last_event_id(value: str | None) -> tuple[int, int]:
    if not value:
        return 0, 0
    try:
        event_id, metric_id = (int(part) for part in value.split("-"))
    except ValueError as exc:
        raise InvalidRequest(f"Last-Event-ID {value!r} is not of the form <int>-<int>",
                             param="Last-Event-ID") from exc
    return event_id, metric_id


def _checkpoint_payload(ckpt: Checkpoint | None, fallback: dict[str, Any] | None) -> dict[str, Any]:
    if ckpt is None:
        return fallback or {}
    return {"id": ckpt.id, "job_id": ckpt.job_id, "step": ckpt.step, "metrics": ckpt.metrics,
            "size_bytes": ckpt.size_bytes, "sha256": ckpt.sha256, "is_final": ckpt.is_final}


def fetch_news(url: str, job_id: str, event_cursor: int, metric_cursor: int) -> tuple[str | None, list[tuple]]:
    """The job's status (read first) and what happened after the cursors, in time order."""
    with session_scope(url) as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        metrics = session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.id > metric_cursor)
                                  .order_by(Metric.id).limit(FETCH_LIMIT)).all()
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > event_cursor)
                                 .order_by(JobEvent.id).limit(FETCH_LIMIT)).all()
        items: list[tuple] = []
        for m in metrics:
            items.append((m.created_at, 0, "metrics", m.id, {"step": m.step, "values": m.values}))
        for e in events:
            if e.type == "checkpoint":
                ckpt = session.get(Checkpoint, (e.data or {}).get("checkpoint_id"))
                payload = _checkpoint_payload(ckpt, e.data)
            elif e.type == "status":
                payload = {**(e.data or {}), "message": e.message}
            else:
                payload = {"level": e.level, "message": e.message, "data": e.data}
            items.append((e.created_at, 1, e.type, e.id, payload))
    # Metrics before events at the same instant: a terminal status always comes last.
    items.sort(key=lambda it: (it[0], it[1], it[3]))
    caught_up = len(metrics) < FETCH_LIMIT and len(events) < FETCH_LIMIT
    return (status if caught_up else None), items


def _sse(event: str, id_: str, data: dict[str, Any]) -> str:
    return f"id: {id_}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def job_stream(*, settings: Settings, job_id: str, last_event_id: str | None,
                     is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """Yield SSE frames for the job until it is terminal and fully sent, or the client leaves."""
    event_cursor, metric_cursor = parse_last_event_id(last_event_id)
    yield "retry: 2000\n\n"
    async with Waiter(settings.celery_broker_url, job_id) as waiter:  # subscribe before the first read
        async for frame in _frames(settings, job_id, event_cursor, metric_cursor, waiter, is_disconnected):
            yield frame


async def _frames(settings: Settings, job_id: str, event_cursor: int, metric_cursor: int, waiter: Waiter,
                  is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    last_write = time.monotonic()
    while not await is_disconnected():
        status, items = await run_in_threadpool(fetch_news, settings.database_url, job_id,
                                                event_cursor, metric_cursor)
        for _, _, kind, row_id, payload in items:
            if kind == "metrics":
                metric_cursor = max(metric_cursor, row_id)
            else:
                event_cursor = max(event_cursor, row_id)
            yield _sse(kind, f"{event_cursor}-{metric_cursor}", payload)
            last_write = time.monotonic()
        if status in TERMINAL_STATUSES:
            return
        if time.monotonic() - last_write >= settings.stream_keepalive_seconds:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        if not items:
            await waiter.wait(settings.stream_poll_seconds)
