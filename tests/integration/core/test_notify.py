"""Live-stream wake-ups over the real Redis; the embedded mode falls back to polling."""

import asyncio
import uuid

from core.notify import WakeUps, publish
from tests.support import REDIS_URL


async def woken(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


def test_publish_wakes_the_watchers_of_that_job_only():
    job_a, job_b = f"job_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"

    async def scenario() -> tuple[bool, bool, bool, bool]:
        wakeups = WakeUps(REDIS_URL)
        first, second, other = wakeups.watch(job_a), wakeups.watch(job_a), wakeups.watch(job_b)
        await asyncio.wait_for(wakeups.subscribed.wait(), 30)
        for event in (first, second, other):
            event.clear()  # set once on subscribing, for news published before it
        await asyncio.to_thread(publish, REDIS_URL, job_a)
        result = await woken(first, 60), await woken(second, 60), await woken(other, 0.3)
        for job, event in ((job_a, first), (job_a, second), (job_b, other)):
            wakeups.unwatch(job, event)
        return *result, wakeups.subscribed.is_set()

    # one subscription serves every watcher, and is dropped with the last of them
    assert asyncio.run(scenario()) == (True, True, False, False)


def test_embedded_broker_polls_and_publish_is_a_no_op(tmp_path):
    broker = f"sqla+sqlite:///{tmp_path}/b.db"
    publish(broker, "job_x")

    async def scenario() -> bool:
        wakeups = WakeUps(broker)
        event = wakeups.watch("job_x")
        try:
            return await woken(event, 0.05)
        finally:
            wakeups.unwatch("job_x", event)

    assert asyncio.run(scenario()) is False


def test_unreachable_redis_degrades_to_polling():
    publish("redis://127.0.0.1:1/0", "job_x")  # logs, never raises

    async def scenario() -> tuple[bool, bool]:
        wakeups = WakeUps("redis://127.0.0.1:1/0", reconnect_seconds=0.05)
        event = wakeups.watch("job_x")
        await asyncio.sleep(0.3)  # several failed connection attempts, none of them raising
        subscribed = wakeups.subscribed.is_set()
        wakeups.unwatch("job_x", event)
        return subscribed, event.is_set()

    assert asyncio.run(scenario()) == (False, False)
