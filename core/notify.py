"""Wake-ups for live streams: after committing news about a job, a writer publishes on the job's
Redis channel so the job's stream feed reads the database at once instead of at its next poll.

The database stays the source of truth: a lost wake-up only delays a stream to its next poll. With
a broker other than Redis (the embedded mode) there are no wake-ups and feeds poll.
"""

import asyncio
import logging
from functools import lru_cache

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

PREFIX = "rlhf:jobs:"


def channel(job_id: str) -> str:
    return f"{PREFIX}{job_id}"


def uses_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://"))


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def publish(broker_url: str, job_id: str) -> None:
    """Tell streams of `job_id` that news is committed; never fails the caller."""
    if not uses_redis(broker_url):
        return
    try:
        _client(broker_url).publish(channel(job_id), b"1")
    except redis.RedisError as exc:
        log.warning("wake-up for %s not published: %s", job_id, exc)


class WakeUps:
    """One pattern subscription to every job's channel, shared by all the jobs watched in this event loop.

    `watch(job_id)` returns an `asyncio.Event` set whenever the job's channel is published to (and
    after the subscription reconnects, since wake-ups may have been lost meanwhile). The Redis
    connection is opened with the first watch and closed with the last, so an idle API holds none.
    """

    def __init__(self, broker_url: str, *, reconnect_seconds: float = 1.0) -> None:
        self._url = broker_url if uses_redis(broker_url) else None
        self._reconnect_seconds = reconnect_seconds
        self._events: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None
        self.subscribed = asyncio.Event()  # the subscription is live (tests wait for it)

    def watch(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        if self._url is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="stream wake-ups")
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        events = self._events.get(job_id, set())
        events.discard(event)
        if not events:
            self._events.pop(job_id, None)
        if not self._events and self._task is not None:
            self._task.cancel()
            self._task = None
            self.subscribed.clear()

    def _wake(self, job_id: str | None = None) -> None:
        for key in ([job_id] if job_id is not None else list(self._events)):
            for event in self._events.get(key, ()):
                event.set()

    async def _listen(self) -> None:
        while True:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{PREFIX}*")
                self.subscribed.set()
                self._wake()  # whatever was published before the subscription: read the database now
                async for message in pubsub.listen():
                    self._wake(message["channel"].decode().removeprefix(PREFIX))
            except (redis.RedisError, OSError) as exc:
                log.warning("live wake-ups unavailable, streams poll until Redis is back: %s", exc)
            finally:
                self.subscribed.clear()
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(self._reconnect_seconds)
