"""GET /metrics on both backends: the Prometheus text format, request counts by route template, the
database's job gauges as a job moves, the optional token, and a scrape that survives the database."""

import socket

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from api.main import create_app
from api.observability.database import DatabaseCollector
from core.db import session_scope
from core.lifecycle import claim_job, hold, transition
from core.models import Checkpoint, JobStatus
from core.settings import Settings
from tests.metrics_support import Scrape, scrape
from tests.support import jsonl, preference_rows, upload

TOKEN = "mtk-7Qv2xR9pLw4ZcN8bH3sJ6dY"
REQUESTS = "rlhf_http_requests_total"


def test_requests_are_counted_by_route_template_never_by_raw_path(client):
    before = scrape(client)
    for job_id in ("job_aaa", "job_bbb"):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/v1/jobs").status_code == 200
    assert client.get("/no/such/path/42").status_code == 404
    assert client.delete("/v1/jobs").status_code == 405
    after = scrape(client)

    def delta(**labels: str) -> float:
        return after[REQUESTS, labels] - before[REQUESTS, labels]

    assert delta(method="GET", route="/v1/jobs/{job_id}", status="404") == 2
    assert delta(method="GET", route="/v1/jobs", status="200") == 1
    assert delta(method="GET", route="<unmatched>", status="404") == 1
    assert delta(method="DELETE", route="/v1/jobs", status="405") == 1
    count = "rlhf_http_request_duration_seconds_count"
    assert after[count, {"method": "GET", "route": "/v1/jobs/{job_id}"}] == 2
    routes = {labels["route"] for labels in after.series(REQUESTS)}
    assert not any(raw in r for r in routes for raw in ("job_aaa", "job_bbb", "/no/such")), routes  # templates only
    assert "/metrics" not in routes  # scrapes are not counted
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert after["process_cpu_seconds_total", {}] > 0 and after["rlhf_scrape_error", {}] == 0


def test_job_gauges_follow_a_job_through_its_statuses(client, settings):
    dataset_id = upload(client, jsonl(preference_rows(4))).json()["id"]
    job_id = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                           "dataset_id": dataset_id}).json()["id"]
    dpo = {"type": "dpo"}
    queued = scrape(client)
    assert queued["rlhf_jobs", dpo | {"status": "queued"}] == 1
    assert queued["rlhf_jobs", dpo | {"status": "succeeded"}] == 0  # every status of a type present is shown
    assert queued["rlhf_queue_depth", {}] == 1 and queued["rlhf_queue_oldest_age_seconds", {}] >= 0
    assert queued["rlhf_datasets", {"kind": "preference"}] == 1
    assert queued["rlhf_dataset_rows", {"kind": "preference"}] == 4
    assert queued.series("rlhf_job_current_step") == []

    with session_scope(settings.database_url) as session:
        lease = claim_job(session, job_id, "w1")
    running = scrape(client)
    assert running["rlhf_jobs", dpo | {"status": "running"}] == 1
    assert running["rlhf_jobs", dpo | {"status": "queued"}] == 0 and running["rlhf_queue_depth", {}] == 0
    assert running.series("rlhf_job_steps_per_second") == []  # not measured yet: no sample, never a 0
    assert running["rlhf_worker_heartbeat_age_seconds", {"worker": "w1"}] >= 0
    assert running.series("rlhf_job_heartbeat_age_seconds") == [{"job_id": job_id, "worker": "w1"}]

    with session_scope(settings.database_url) as session:
        hold(session, lease, current_step=3, total_steps=10, steps_per_second=2.5, tokens_per_second=640.0)
        session.add(Checkpoint(job_id=job_id, step=3, artifact_key="ckpt", size_bytes=1234, sha256="0" * 64,
                               metrics={}))
    paced = scrape(client)
    job = {"job_id": job_id, "type": "dpo"}
    assert paced["rlhf_job_current_step", job] == 3 and paced["rlhf_job_total_steps", job] == 10
    assert paced["rlhf_job_steps_per_second", job] == 2.5
    assert paced["rlhf_job_tokens_per_second", job] == 640.0
    assert paced["rlhf_checkpoint_bytes", dpo] == 1234 and paced["rlhf_checkpoints", dpo] == 1

    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.succeeded)
    done = scrape(client)
    assert done["rlhf_jobs", dpo | {"status": "succeeded"}] == 1
    assert done["rlhf_jobs", dpo | {"status": "running"}] == 0
    for name in ("rlhf_job_current_step", "rlhf_job_steps_per_second", "rlhf_worker_heartbeat_age_seconds"):
        assert done.series(name) == [], name  # only running jobs and their workers have series
    assert done["rlhf_checkpoint_bytes", dpo] == 1234

    # A stream passes through untouched and is counted once, when its response starts.
    with client.stream("GET", f"/v1/jobs/{job_id}/stream") as r:
        assert r.status_code == 200 and '"succeeded"' in r.read().decode()
    stream = {"method": "GET", "route": "/v1/jobs/{job_id}/stream", "status": "200"}
    assert scrape(client)[REQUESTS, stream] == 1


def test_the_metrics_token_is_required_when_set(settings, project_key):
    guarded = settings.model_copy(update={"metrics_token": SecretStr(TOKEN)})
    with TestClient(create_app(guarded)) as client:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {project_key}"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
        assert scrape(client, Authorization=f"Bearer {TOKEN}")["rlhf_scrape_error", {}] == 0
    with TestClient(create_app(settings)) as open_client:  # unset: no header needed at all
        assert open_client.get("/metrics").status_code == 200


def test_empty_metrics_token_means_unset():
    assert Settings(metrics_token="").metrics_token is None
    with pytest.raises(ValueError, match="METRICS_TOKEN must be a random secret"):
        Settings(metrics_token="changeme")


def test_an_unreachable_database_is_a_scrape_error_not_a_failed_scrape(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/gone",
                        celery_broker_url=f"sqla+sqlite:///{tmp_path}/broker.db", artifacts_dir=tmp_path / "a")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer some-key"}).status_code == 503
        result = scrape(client)
    assert result["rlhf_scrape_error", {}] == 1
    assert result.series("rlhf_jobs") == [] and result.series("rlhf_queue_depth") == []
    assert result["rlhf_http_requests_total", {"method": "GET", "route": "/v1/jobs", "status": "503"}] == 1


@pytest.mark.postgres
def test_a_read_held_up_by_a_lock_gives_up_at_its_deadline(postgres_settings_factory):
    settings = postgres_settings_factory()
    collector = DatabaseCollector(settings.database_url, timeout_seconds=0.5)
    locker = create_engine(settings.database_url)
    with locker.connect() as conn:
        conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        held = {f.name: f.samples for f in collector.collect()}
        assert held["rlhf_scrape_error"][0].value == 1 and "rlhf_jobs" not in held
        # The server cancels the blocked read at the same deadline (statement_timeout); a scrape that came
        # while it was still in flight would wait on it, so let it end before the next one.
        assert isinstance(collector._read.exception(timeout=30), OperationalError)
        conn.rollback()
    locker.dispose()
    freed = {f.name: f.samples for f in collector.collect()}
    assert freed["rlhf_scrape_error"][0].value == 0 and freed["rlhf_queue_depth"][0].value == 0


def test_scrape_names_include_families_without_samples():
    text_ = "# HELP rlhf_x_total a\n# TYPE rlhf_x_total counter\n# HELP rlhf_g g\n# TYPE rlhf_g gauge\nrlhf_g 1\n"
    assert {"rlhf_x_total", "rlhf_g"} <= Scrape(text_).names()
