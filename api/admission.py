"""Admission: no more requests work at once than the database pool and the thread pool can serve.

Routes are synchronous: FastAPI runs each dependency and the endpoint in turn on worker threads
(40 by default), and a request's session keeps its connection from its first query to its end.
With more requests in flight than connections, requests holding a connection wait for a thread
while the threads are held by requests waiting for a connection, until the pool times out - every
request then fails together. Requests past the limit wait here instead, holding neither, and get a
503 with Retry-After if no slot frees within DB_POOL_TIMEOUT_SECONDS.

A request gives its slot back when its response starts: a live stream then holds none while it
waits for news (it reads through its job's feed, whose reads have connections of their own).
"""

import asyncio
import json
import weakref

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_content
from core.settings import Settings

THREADS = 40  # anyio's default worker threads, which run synchronous routes and dependencies
UNGATED = {"/healthz"}


def stream_read_slots(settings: Settings) -> int:
    """Connections the live streams' feeds may use at once (kept out of the requests' share)."""
    return max(1, settings.db_pool_size // 2)


def request_slots(settings: Settings) -> int:
    """Requests admitted at once: the pool's connections less the streams' share, and fewer than the threads."""
    connections = settings.db_pool_size + settings.db_max_overflow
    return max(1, min(connections - stream_read_slots(settings), THREADS - 8))


class Admission:
    """Pure ASGI middleware: a semaphore of `slots` around each HTTP request until its response starts."""

    def __init__(self, app: ASGIApp, *, slots: int, wait_seconds: float) -> None:
        self.app, self.slots, self.wait_seconds = app, slots, wait_seconds
        # asyncio primitives belong to one event loop; a test may serve the same app from several.
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED:
            await self.app(scope, receive, send)
            return
        semaphore = self._semaphores.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(self.slots))
        try:
            await asyncio.wait_for(semaphore.acquire(), self.wait_seconds)
        except TimeoutError:
            await _busy(scope, send)
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                semaphore.release()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()


async def _busy(scope: Scope, send: Send) -> None:
    status, content = error_content(scope["path"], 503, "service_unavailable", "the service is busy; retry later")
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})
