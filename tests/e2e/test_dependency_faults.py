"""Postgres and Redis stopped and restarted under a running service: 503s while down, recovery after.

The test runs its own servers on spare ports, so it can stop them without touching anyone else's.
"""

import time
import uuid

import pytest

from core.migrate import upgrade
from core.settings import Settings
from tests.e2e.e2e_support import Deployment, PrivatePostgres, PrivateRedis, create_dataset, wait_for

pytestmark = pytest.mark.e2e


def until(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the service may refuse connections while it recovers
            pass
        time.sleep(0.3)
    pytest.fail(f"never {what}")


@pytest.fixture
def servers(tmp_path):
    pg, redis = PrivatePostgres(), PrivateRedis(tmp_path / "redis")
    pg.start()
    redis.start()
    yield pg, redis
    for server in (redis, pg):
        try:
            server.stop()
        except Exception:  # already stopped by a failed test
            pass
    pg.remove()


def test_outages_answer_503_and_the_service_recovers_without_a_restart(servers, tmp_path):
    pg, redis = servers
    upgrade(pg.url)
    settings = Settings(database_url=pg.url, celery_broker_url=redis.url, artifacts_dir=tmp_path / "artifacts",
                        models_dir=tmp_path / "models", training_queue=f"training-{uuid.uuid4().hex[:6]}")
    dep = Deployment(settings, tmp_path, HEARTBEAT_SECONDS="0.5", LEASE_SECONDS="60", DB_OUTAGE_GRACE_SECONDS="120")
    try:
        dep.start_api()
        dep.start_worker()
        client = dep.client
        dataset = create_dataset(client)
        in_flight = client.post("/v1/jobs", json={
            "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset,
            "hyperparameters": {"learning_rate": 1e-3, "max_steps": 200, "checkpoint_every": 100}}).json()["id"]
        wait_for(client, in_flight, lambda j: j["current_step"] >= 10, "step 10")

        # 1. the database goes away: readiness and every request answer 503 with a retry hint
        pg.stop()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
        for r in (client.get("/v1/jobs"), client.post("/v1/jobs", json={"type": "dpo", "base_model": "m",
                                                                          "dataset_id": dataset})):
            assert r.status_code == 503 and r.headers["Retry-After"]
            assert r.json()["error"]["type"] == "service_unavailable"
        time.sleep(2)
        pg.start()
        until(lambda: client.get("/readyz").status_code == 200, "ready after the database came back")

        # 2. the broker goes away: job creation answers 503 and creates nothing
        redis.stop()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unreachable")
        before = len(client.get("/v1/jobs").json()["data"])
        r = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset})
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert len(client.get("/v1/jobs").json()["data"]) == before
        redis.start()
        until(lambda: client.get("/readyz").status_code == 200, "ready after the broker came back")

        # 3. the job that was training through both outages finishes on its first attempt
        job = wait_for(client, in_flight, lambda j: j["status"] not in ("queued", "running"), "its end")
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        steps = [m["step"] for m in client.get(f"/v1/jobs/{in_flight}/metrics", params={"limit": 1000}).json()["data"]]
        assert steps == list(range(1, 201))

        # 4. a job submitted after recovery is picked up by the reconnected worker and succeeds
        after = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset,
                                              "hyperparameters": {"max_steps": 3}}).json()["id"]
        job = wait_for(client, after, lambda j: j["status"] not in ("queued", "running"), "its end")
        assert job["status"] == "succeeded", job
    finally:
        dep.stop()
