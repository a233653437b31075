"""Helpers of the end-to-end tests: datasets, following a job, waiting."""

import time

import pytest

from support import jsonl, parse_sse
from trainers.synthetic import uppercase_preference_rows

DEADLINE = 240  # seconds for any one job to finish on a 2-core machine


def create_dataset(client, rows=None) -> str:
    rows = uppercase_preference_rows(96, seed=1) if rows is None else rows
    r = client.post("/v1/datasets", data={"kind": "preference", "name": "uppercase"},
                    files={"file": ("pairs.jsonl", jsonl(rows))})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def stream_until_done(client, job_id: str) -> list[dict]:
    text = []
    with client.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=DEADLINE) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_text():
            text.append(chunk)
    return parse_sse("".join(text))


def wait_for(client, job_id: str, predicate, what: str) -> dict:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} never reached {what}: {job}")


