"""Stream cursors outside the id range, and a busy database pool, answer clearly, on both backends."""

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.db import engine_for
from tests.support import jsonl, preference_rows, upload


@pytest.fixture
def job_id(client) -> str:
    ds = upload(client, jsonl(preference_rows(4))).json()["id"]
    return client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                         "dataset_id": ds}).json()["id"]


@pytest.mark.parametrize("last_event_id", ["100000000000000000000-0", "0-9223372036854775808", "-1-0", "1--5",
                                           "0-0-9223372036854775808", "1-2-3-4", "1-2-", "1.5-0", "0x1-0"])
def test_a_cursor_outside_the_id_range_is_a_422_before_the_stream(client, job_id, last_event_id):
    r = client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": last_event_id})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["param"] == "Last-Event-ID"


def test_the_largest_cursor_is_accepted(client, job_id):
    from core.db import session_scope
    from core.lifecycle import transition
    from core.models import JobStatus

    with session_scope(client.app.state.settings.database_url) as session:
        transition(session, job_id, JobStatus.cancelled)
    for largest in ("9223372036854775807-0-9223372036854775807", "9223372036854775807-0"):  # 3-part and 2-part
        r = client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": largest})
        assert r.status_code == 200 and "event:" not in r.text  # nothing after that cursor


def test_an_exhausted_pool_answers_503_with_retry_after(settings, project_key):
    small = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 0.2})
    with TestClient(create_app(small), headers={"Authorization": f"Bearer {project_key}"}) as client:
        assert client.get("/v1/jobs").status_code == 200
        with engine_for(small.database_url).connect():  # the only connection, held elsewhere
            r = client.get("/v1/jobs")
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json()["error"]["type"] == "service_unavailable"
        assert client.get("/v1/jobs").status_code == 200
