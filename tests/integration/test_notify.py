"""Live-stream wake-ups over the real Redis; the embedded mode falls back to polling."""

import asyncio
import uuid

from core.notify import Waiter, publish
from support import REDIS_URL


def test_publish_wakes_a_waiting_stream():
    job_id = f"job_{uuid.uuid4().hex}"

    async def scenario() -> tuple[bool, bool]:
        async with Waiter(REDIS_URL, job_id) as waiter:
            idle = await waiter.wait(0.05)
            await asyncio.to_thread(publish, REDIS_URL, job_id)
            woken = await waiter.wait(60)
        return idle, woken

    assert asyncio.run(scenario()) == (False, True)


def test_other_jobs_do_not_wake_it():
    async def scenario() -> bool:
        async with Waiter(REDIS_URL, "job_a") as waiter:
            await asyncio.to_thread(publish, REDIS_URL, "job_b")
            return await waiter.wait(0.3)

    assert asyncio.run(scenario()) is False


def test_embedded_broker_polls_and_publish_is_a_no_op(tmp_path):
    broker = f"sqla+sqlite:///{tmp_path}/b.db"
    publish(broker, "job_x")

    async def scenario() -> bool:
        async with Waiter(broker, "job_x") as waiter:
            return await waiter.wait(0.01)

    assert asyncio.run(scenario()) is False


def test_unreachable_redis_degrades_to_polling():
    publish("redis://127.0.0.1:1/0", "job_x")  # logs, never raises

    async def scenario() -> bool:
        async with Waiter("redis://127.0.0.1:1/0", "job_x") as waiter:
            return await waiter.wait(0.01)

    assert asyncio.run(scenario()) is False
