"""One poller per job per API process, fanning its reads out to every live stream of the job.

A job's `Feed` reads the database in short transactions (at a wake-up, or every
`stream_poll_seconds`) and offers each batch of news to its subscriptions' queues; it starts with
the first subscription and stops when the last one leaves. No stream holds a connection while it
waits. A subscription whose client reads too slowly is not allowed to grow without bound: its queue
is dropped and replaced by a `LAGGED` mark, and the stream catches up from its own cursor.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.notify import WakeUps

log = logging.getLogger(__name__)

MAX_PENDING = 256  # batches a subscription may hold before it is told to catch up on its own
LAGGED = object()
# Reads that fail because the database is away or busy are retried; streams wait meanwhile.
TRANSIENT = (OperationalError, InterfaceError, PoolTimeout)

# A stream's position: the last id it has of each table that feeds it, (job_event, metric, sample).
Cursors = tuple[int, int, int]
# Which of the cursors an SSE event's row id advances; every other event is a job_event (0).
CURSOR_SLOTS = {"metrics": 1, "samples": 2}
Fetch = Callable[[str, str, Cursors], tuple[str | None, list[tuple]]]


@dataclass(frozen=True)
class Batch:
    """News read by one poll: the job's status when the read caught up (else None), and the items."""

    status: str | None
    items: list[tuple]


class Subscription:
    """One stream's queue of batches from its job's feed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(MAX_PENDING)
        self.lags = 0  # times the queue overflowed

    def offer(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Everything dropped was committed before now: the stream's own catch-up read sees it.
            self.lags += 1
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(LAGGED if isinstance(item, Batch) else item)

    async def next(self, timeout: float) -> Any:
        """The next batch, `LAGGED`, an exception the feed died of, or None after `timeout`."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None


class Feed:
    """The poller of one job, reading from the cursor of the subscription that started it."""

    def __init__(self, hub: "Hub", job_id: str, cursors: Cursors) -> None:
        self.hub, self.job_id = hub, job_id
        self.cursor = list(cursors)
        self.subscriptions: set[Subscription] = set()
        self.wake = hub.wakeups.watch(job_id)
        self.task = asyncio.create_task(self._run(), name=f"stream feed {job_id}")

    async def _run(self) -> None:
        last_status: str | None = None
        try:
            while True:
                self.wake.clear()  # a wake-up during the read below makes the next wait return at once
                try:
                    status, items = await self.hub.read(self.job_id, tuple(self.cursor))
                except TRANSIENT as exc:
                    log.warning("stream feed of %s cannot read the database, retrying: %s", self.job_id, exc)
                    await asyncio.sleep(self.hub.poll_seconds)
                    continue
                for _, _, kind, row_id, _ in items:
                    slot = CURSOR_SLOTS.get(kind, 0)
                    self.cursor[slot] = max(self.cursor[slot], row_id)
                if items or (status is not None and status != last_status):
                    batch = Batch(status, items)
                    for subscription in list(self.subscriptions):
                        subscription.offer(batch)
                    last_status = status or last_status
                if status is None:
                    continue  # more pages wait: read on without sleeping
                try:
                    async with asyncio.timeout(self.hub.poll_seconds):
                        await self.wake.wait()
                except TimeoutError:
                    pass
        except Exception as exc:  # reported to every stream, which ends with an error
            log.exception("stream feed of %s failed", self.job_id)
            if self.hub.feeds.get(self.job_id) is self:  # the next stream starts a new feed
                del self.hub.feeds[self.job_id]
                self.hub.wakeups.unwatch(self.job_id, self.wake)
            for subscription in list(self.subscriptions):
                subscription.offer(exc)

    def stop(self) -> None:
        self.task.cancel()
        self.hub.wakeups.unwatch(self.job_id, self.wake)


class Hub:
    """The feeds of one API process (one event loop) on one database, by job id."""

    def __init__(self, *, database_url: str, broker_url: str, poll_seconds: float, read_slots: int,
                 fetch: Fetch) -> None:
        self.database_url, self.poll_seconds, self.fetch = database_url, poll_seconds, fetch
        self.wakeups = WakeUps(broker_url)
        self.feeds: dict[str, Feed] = {}
        # Stream reads take at most this many threads (and pooled connections) at once, so a crowd
        # of streams connecting together cannot starve ordinary requests of either.
        self.limiter = anyio.CapacityLimiter(read_slots)

    async def read(self, job_id: str, cursors: Cursors) -> tuple[str | None, list[tuple]]:
        """One short read transaction of the job's news after the cursors, in a worker thread."""
        return await anyio.to_thread.run_sync(self.fetch, self.database_url, job_id, cursors, limiter=self.limiter)

    def join(self, job_id: str, cursors: Cursors) -> tuple[Subscription, bool]:
        """Subscribe to the job's feed; True when this subscription started it (the feed reads from
        its cursor, so it needs no catch-up of its own)."""
        subscription = Subscription()
        feed = self.feeds.get(job_id)
        started = feed is None
        if feed is None:
            feed = self.feeds[job_id] = Feed(self, job_id, cursors)
        feed.subscriptions.add(subscription)
        return subscription, started

    def leave(self, job_id: str, subscription: Subscription) -> None:
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        feed.subscriptions.discard(subscription)
        if not feed.subscriptions:
            del self.feeds[job_id]
            feed.stop()


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Hub]]" = weakref.WeakKeyDictionary()


def hub_for(*, database_url: str, broker_url: str, poll_seconds: float, read_slots: int, fetch: Fetch) -> Hub:
    """The hub of the running event loop for these settings (asyncio objects belong to one loop)."""
    hubs = _hubs.setdefault(asyncio.get_running_loop(), {})
    key = (database_url, broker_url, poll_seconds, read_slots)
    if key not in hubs:
        hubs[key] = Hub(database_url=database_url, broker_url=broker_url, poll_seconds=poll_seconds,
                        read_slots=read_slots, fetch=fetch)
    return hubs[key]
