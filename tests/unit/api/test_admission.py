"""The admission gate: requests past its slots wait, and get a 503 when none frees in time; a response
that has started (a live stream) holds no slot."""

import asyncio
import json

from api.admission import Admission, request_slots
from core.settings import Settings


def http(path: str = "/v1/jobs") -> dict:
    return {"type": "http", "path": path, "method": "GET", "headers": []}


async def call(app, path: str = "/v1/jobs") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(http(path), receive, send)
    return sent


def test_requests_past_the_slots_wait_then_503_and_a_started_response_frees_its_slot():
    async def scenario():
        release, streaming = asyncio.Event(), asyncio.Event()

        async def inner(scope, receive, send):
            if scope["path"] == "/slow":  # holds its slot until released, like a long request
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            if scope["path"] == "/stream":  # a stream waits for news after its response started
                streaming.set()
                await release.wait()
            await send({"type": "http.response.body", "body": b"ok"})

        gate = Admission(inner, slots=1, wait_seconds=0.2)
        stream = asyncio.create_task(call(gate, "/stream"))
        await streaming.wait()
        assert (await call(gate, "/fast"))[0]["status"] == 200  # the open stream holds no slot
        slow = asyncio.create_task(call(gate, "/slow"))
        await asyncio.sleep(0.05)
        refused = await call(gate, "/fast")
        health = await call(gate, "/healthz")  # never gated
        release.set()
        return refused, health, await slow, await stream, await call(gate, "/fast")

    refused, health, slow, stream, after = asyncio.run(scenario())
    assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["error"]["type"] == "service_unavailable"
    assert [m[0]["status"] for m in (health, slow, stream, after)] == [200, 200, 200, 200]


def test_slots_leave_connections_to_the_streams_and_threads_to_the_rest():
    assert request_slots(Settings(db_pool_size=5, db_max_overflow=10)) == 13
    assert request_slots(Settings(db_pool_size=2, db_max_overflow=0)) == 1
    assert request_slots(Settings(db_pool_size=50, db_max_overflow=50)) == 32
