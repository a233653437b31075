"""Wake-ups for live streams: after committing news about a job, a writer publishes on the job's
Redis channel so waiting streams read the database at once instead of at their next poll.

The database stays the source of truth: a lost wake-up only delays a stream to its next poll. With
a broker other than Redis (the embedded mode) there are no wake-ups and streams poll.
"""

import asyncio
import logging
from functools import lru_cache

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)


def channel(job_id: str) -> str:
    return f"rlhf:jobs:{job_id}"


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


class Waiter:
    """Waits for a job's wake-up or a timeout, whichever comes first (async, one per stream)."""

    def __init__(self, broker_url: str, job_id: str) -> None:
        self._redis = aioredis.Redis.from_url(broker_url) if uses_redis(broker_url) else None
        self._pubsub = None
        self._job_id = job_id

    async def __aenter__(self) -> "Waiter":
        if self._redis is not None:
            try:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(channel(self._job_id))
            except redis.RedisError as exc:
                log.warning("live wake-ups unavailable, polling instead: %s", exc)
                self._pubsub = None
        return self

    async def wait(self, timeout: float) -> bool:
        """Return True when woken by a publish, False when the timeout passed first."""
        if self._pubsub is not None:
            try:
                return await self._pubsub.get_message(timeout=timeout) is not None
            except redis.RedisError as exc:
                log.warning("live wake-up failed, polling instead: %s", exc)
        await asyncio.sleep(timeout)
        return False

    async def __aexit__(self, *exc: object) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()
