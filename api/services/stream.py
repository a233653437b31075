"""Live job stream as Server-Sent Events, resumable with Last-Event-ID.

Three tables feed the stream - `job_events` (status, event, checkpoint), `metrics` and `job_samples`
(samples) - so an event id is the triple of cursors `<last job_event id>-<last metric id>-<last sample id>`.
A two-part id, `<job_event>-<metric>`, as streams sent before samples were streamed, is still
accepted: it resumes samples from the first, so a client holding one misses nothing and may be sent
samples it had read from `/samples`. A step written again by a resumed run keeps its row (and id):
a stream that sent it does not send it again. The database is the source of truth,
read in short transactions: a stream catches up from its own cursor, then follows its job's shared
feed (api/services/feeds.py), skipping what it already sent, and closes once the job is terminal
or paused and everything has been sent (a paused job changes only when someone resumes it: the
client opens the stream again after the resume, with Last-Event-ID to miss nothing). No stream
holds a connection or transaction while it waits.
"""

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import select

from api.admission import stream_read_slots
from api.errors import InvalidRequest
from api.services.feeds import CURSOR_SLOTS, LAGGED, Cursors, Hub, Subscription, hub_for
from core.db import session_scope
from core.models import TERMINAL_STATUSES, Checkpoint, Job, JobEvent, JobSample, JobStatus, Metric
from core.settings import Settings

FETCH_LIMIT = 500
SAMPLE_FETCH_LIMIT = 50  # samples carry text: fewer per read
# Statuses that close a stream: nothing happens to the job until someone asks (a paused job is resumable).
CLOSING_STATUSES = TERMINAL_STATUSES | {JobStatus.paused}


MAX_ID = 2**63 - 1  # ids are 64-bit signed integers in the database
_CURSOR = re.compile(r"([0-9]{1,19})-([0-9]{1,19})(?:-([0-9]{1,19}))?")


def parse_last_event_id(value: str | None) -> Cursors:
    """The (job_event, metric, sample) cursors of a Last-Event-ID; 422 unless each is an id the tables can hold.

    A two-part id (`<job_event>-<metric>`) has sample cursor 0: every sample is sent again.
    """
    if not value:
        return 0, 0, 0
    match = _CURSOR.fullmatch(value)
    if match is None or max(int(part or 0) for part in match.groups()) > MAX_ID:
        raise InvalidRequest(f"Last-Event-ID {value[:64]!r} is not of the form <id>-<id>-<id> (or <id>-<id>) "
                             f"with ids from 0 to {MAX_ID}", param="Last-Event-ID")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _checkpoint_payload(ckpt: Checkpoint | None, fallback: dict[str, Any] | None) -> dict[str, Any]:
    if ckpt is None:
        return fallback or {}
    return {"id": ckpt.id, "job_id": ckpt.job_id, "step": ckpt.step, "metrics": ckpt.metrics,
            "size_bytes": ckpt.size_bytes, "sha256": ckpt.sha256, "is_final": ckpt.is_final}


def fetch_news(url: str, job_id: str, cursors: Cursors) -> tuple[str | None, list[tuple]]:
    """The job's status (read first) and what happened after the cursors, in time order.

    Each item is (time, rank, SSE event, row id, JSON data): the data is encoded here, once, in the
    reading thread, however many streams send it.
    """
    event_cursor, metric_cursor, sample_cursor = cursors
    with session_scope(url) as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        metrics = session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.id > metric_cursor)
                                  .order_by(Metric.id).limit(FETCH_LIMIT)).all()
        samples = session.scalars(select(JobSample).where(JobSample.job_id == job_id, JobSample.id > sample_cursor)
                                  .order_by(JobSample.id).limit(SAMPLE_FETCH_LIMIT)).all()
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > event_cursor)
                                 .order_by(JobEvent.id).limit(FETCH_LIMIT)).all()
        items: list[tuple] = []
        for m in metrics:
            items.append((m.created_at, 0, "metrics", m.id, _json({"step": m.step, "values": m.values})))
        for s in samples:
            items.append((s.created_at, 1, "samples", s.id, _json({"step": s.step, "rows": s.rows})))
        for e in events:
            if e.type == "checkpoint":
                ckpt = session.get(Checkpoint, (e.data or {}).get("checkpoint_id"))
                payload = _checkpoint_payload(ckpt, e.data)
            elif e.type == "status":
                payload = {**(e.data or {}), "message": e.message}
            else:
                payload = {"level": e.level, "message": e.message, "data": e.data}
            items.append((e.created_at, 2, e.type, e.id, _json(payload)))
    # Metrics, then samples, before events at the same instant: a terminal status always comes last.
    items.sort(key=lambda it: (it[0], it[1], it[3]))
    caught_up = len(metrics) < FETCH_LIMIT and len(samples) < SAMPLE_FETCH_LIMIT and len(events) < FETCH_LIMIT
    return (status if caught_up else None), items


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=str)


def _sse(event: str, id_: str, data: str) -> str:
    return f"id: {id_}\nevent: {event}\ndata: {data}\n\n"


class Cursor:
    """What a stream has sent, by table (`Cursors`); turns news into frames, skipping anything sent before."""

    def __init__(self, cursors: Cursors) -> None:
        self.ids = list(cursors)

    @property
    def position(self) -> Cursors:
        return self.ids[0], self.ids[1], self.ids[2]

    def frames(self, items: list[tuple]) -> list[str]:
        seen = self.position  # items are in time order, not id order
        out = []
        for _, _, kind, row_id, payload in items:
            slot = CURSOR_SLOTS.get(kind, 0)
            if row_id <= seen[slot]:
                continue
            self.ids[slot] = max(self.ids[slot], row_id)
            out.append(_sse(kind, "-".join(map(str, self.ids)), payload))
        return out


def hub_of(settings: Settings) -> Hub:
    return hub_for(database_url=settings.database_url, broker_url=settings.celery_broker_url,
                   poll_seconds=settings.stream_poll_seconds, read_slots=stream_read_slots(settings),
                   fetch=fetch_news)


async def job_stream(*, settings: Settings, job_id: str, last_event_id: str | None,
                     is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """Yield SSE frames for the job until it is terminal or paused and fully sent, or the client leaves."""
    cursor = Cursor(parse_last_event_id(last_event_id))
    yield "retry: 2000\n\n"
    hub = hub_of(settings)
    # Join before the first read: whatever is committed after it reaches this stream through the feed.
    subscription, started = hub.join(job_id, cursor.position)
    try:
        async for frame in _frames(settings, hub, job_id, cursor, subscription, not started, is_disconnected):
            yield frame
    finally:
        hub.leave(job_id, subscription)


async def _frames(settings: Settings, hub: Hub, job_id: str, cursor: Cursor, subscription: Subscription,
                  behind: bool, is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    keepalive = settings.stream_keepalive_seconds
    last_write = time.monotonic()
    while True:
        if behind:  # catching up from its own cursor, one page per read
            status, items = await hub.read(job_id, cursor.position)
            behind = status is None
        else:
            news = await subscription.next(max(0.05, keepalive - (time.monotonic() - last_write)))
            if news is None:  # idle for a keep-alive period
                # Uvicorn cancels a stream whose client left; other servers may only say so when asked.
                if await is_disconnected():
                    return
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
                continue
            if news is LAGGED:
                behind = True
                continue
            if isinstance(news, Exception):
                raise RuntimeError(f"the stream feed of {job_id} failed") from news
            status, items = news.status, news.items
        frames = cursor.frames(items)
        if frames:  # one write for the whole batch
            yield "".join(frames)
            last_write = time.monotonic()
        if status in CLOSING_STATUSES:
            return
