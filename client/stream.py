"""Following a job's live stream to its end: resumed with Last-Event-ID after a dropped connection."""

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from client.errors import ApiError, ClientError
from client.http import Api
from client.sse import Frame, SSEParser

# Statuses after which the API closes the stream: nothing changes until someone resumes a paused job.
CLOSING = frozenset({"succeeded", "failed", "cancelled", "paused"})
# Longer than the server's keep-alive interval (STREAM_KEEPALIVE_SECONDS, 15 s): a silent stream is a lost one.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)
RETRYABLE = frozenset({502, 503, 504})
FIRST_RETRY_SECONDS = 0.5  # doubled after each failed attempt, up to 5 s


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def read_job(api: Api, job_id: str) -> dict[str, Any]:
    """The job; transport errors stay httpx's, so that the stream's retry covers them."""
    response = api.http.get(job_path(job_id))
    if response.is_error:
        raise api.error(response)
    return response.json()


def follow(api: Api, job_id: str, on_frames: Callable[[list[Frame]], None], on_retry: Callable[[str], None], *,
           give_up_after: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Read the job's stream until it closes with the job in a closing status, and return the job.

    Frames reach `on_frames` one network read at a time. A dropped connection, a silent one, an
    unavailable API (502-504) or a stream closed before the job's end is retried with the last frame's
    id as Last-Event-ID, so no frame is lost or repeated; after `give_up_after` seconds without a frame
    it raises `ClientError`.
    """
    last_id: str | None = None
    failing_since: float | None = None
    pause = FIRST_RETRY_SECONDS
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with api.stream("GET", job_path(job_id) + "/stream", headers=headers, timeout=STREAM_TIMEOUT) as response:
                parser = SSEParser()
                for chunk in response.iter_text():
                    failing_since, pause = None, FIRST_RETRY_SECONDS
                    frames = parser.feed(chunk)
                    last_id = next((f.id for f in reversed(frames) if f.id), last_id)
                    if frames:
                        on_frames(frames)
            job = read_job(api, job_id)
            if job["status"] in CLOSING:
                return job
            reason = f"the stream closed while the job is {job['status']}"
        except httpx.TransportError as exc:
            reason = f"connection lost ({str(exc) or type(exc).__name__})"
        except ApiError as exc:
            if exc.status not in RETRYABLE:
                raise
            reason = f"the API is unavailable ({exc.message})"
        now = time.monotonic()
        if failing_since is None:
            failing_since = now
        if now - failing_since > give_up_after:
            raise ClientError(f"lost the stream of {job_id}: {reason}; gave up after {give_up_after:.0f} s")
        on_retry(reason)
        sleep(pause)
        pause = min(pause * 2, 5.0)
