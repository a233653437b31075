"""API keys and projects: every resource needs a key, and one project never sees another's."""

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from core.db import session_scope
from core.projects import authenticate, bootstrap_local_key
from tests.support import jsonl, new_project_key, preference_rows, upload
from worker.reporting import JobReporter

ADMIN_KEY = "adm-Q7vX2pL9sK4wT1zR8mN5bC3d"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def app(settings):
    return create_app(settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY)}))


@pytest.fixture
def owned(client, settings, claimed_job):
    """A dataset, a job and a checkpoint of the client's project."""
    from core.artifacts import ArtifactStore

    lease = claimed_job
    job = client.get(f"/v1/jobs/{lease.job_id}").json()
    ds = job["dataset_id"]

    def save(directory):
        (directory / "model").mkdir()
        (directory / "model" / "config.json").write_text("{}")

    JobReporter(url=settings.database_url, lease=lease, store=ArtifactStore(settings.artifacts_dir)) \
        .on_checkpoint(1, save, {"metrics": {}, "model": {"kind": "reward_model", "adapter": False}})
    ckpt = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"][0]["id"]
    return {"dataset": ds, "job": job["id"], "checkpoint": ckpt}


def resource_requests(ids):
    ds, job, ckpt = ids["dataset"], ids["job"], ids["checkpoint"]
    return [
        ("GET", f"/v1/datasets/{ds}", None), ("GET", f"/v1/datasets/{ds}/rows", None),
        ("DELETE", f"/v1/datasets/{ds}", None), ("GET", f"/v1/jobs/{job}", None),
        ("POST", f"/v1/jobs/{job}/cancel", None), ("GET", f"/v1/jobs/{job}/metrics", None),
        ("GET", f"/v1/jobs/{job}/events", None), ("GET", f"/v1/jobs/{job}/checkpoints", None),
        ("GET", f"/v1/jobs/{job}/stream", None), ("GET", f"/v1/checkpoints/{ckpt}", None),
        ("GET", f"/v1/checkpoints/{ckpt}/download", None),
        ("POST", f"/v1/checkpoints/{ckpt}/score", {"texts": ["hi"]}),
    ]


def test_requests_without_a_valid_key_answer_401(app, owned, settings):
    with TestClient(app) as anonymous:
        for method, path, body in resource_requests(owned) + [("GET", "/v1/jobs", None), ("GET", "/v1/datasets", None)]:
            r = anonymous.request(method, path, json=body)
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers["WWW-Authenticate"] == "Bearer"
            r = anonymous.request(method, path, json=body, headers=bearer("rlhf_not-a-key"))
            assert r.status_code == 401, (method, path)
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200


def test_another_projects_resources_answer_404(app, owned, settings, client):
    other = new_project_key(settings, "other")
    with TestClient(app, headers=bearer(other)) as intruder:
        for method, path, body in resource_requests(owned):
            r = intruder.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["type"] == "not_found_error"
        assert intruder.get("/v1/datasets").json()["data"] == []
        assert intruder.get("/v1/jobs").json()["data"] == []
        assert intruder.get("/v1/jobs", params={"after": owned["job"]}).status_code == 422
        r = intruder.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                            "dataset_id": owned["dataset"]})
        assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
        mine = upload(intruder, jsonl(preference_rows(4))).json()["id"]
        r = intruder.post("/v1/jobs", json={"type": "dpo", "base_model": f"checkpoint:{owned['checkpoint']}",
                                            "dataset_id": mine})
        assert r.status_code == 422 and r.json()["error"]["param"] == "base_model"
    # nothing of the owner's was touched
    assert client.get(f"/v1/datasets/{owned['dataset']}").status_code == 200
    assert client.get(f"/v1/jobs/{owned['job']}").json()["status"] == "running"


def test_admin_manages_projects_and_keys(app):
    with TestClient(app) as anonymous:
        assert anonymous.post("/v1/admin/projects", json={"name": "x"}).status_code == 401
    with TestClient(app, headers=bearer(ADMIN_KEY)) as admin:
        project = admin.post("/v1/admin/projects", json={"name": "vision"}).json()
        created = admin.post(f"/v1/admin/projects/{project['id']}/keys", json={"name": "ci"})
        assert created.status_code == 201
        key = created.json()
        assert key["key"].startswith(key["prefix"]) and key["project_id"] == project["id"]
        listed = admin.get(f"/v1/admin/projects/{project['id']}/keys").json()["data"]
        assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
        assert project["id"] in [p["id"] for p in admin.get("/v1/admin/projects").json()["data"]]
        assert admin.post("/v1/admin/projects/proj_missing/keys", json={}).status_code == 404
        with TestClient(app, headers=bearer(key["key"])) as user:
            assert user.get("/v1/jobs").status_code == 200
            assert user.get("/v1/admin/projects").status_code == 401  # a project key is no admin key
            revoked = admin.post(f"/v1/admin/keys/{key['id']}/revoke").json()
            assert revoked["revoked_at"] is not None
            r = user.get("/v1/jobs")
            assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_placeholder_admin_keys_are_refused():
    from core.settings import Settings

    for bad in ("changeme", "short", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"):
        with pytest.raises(ValueError, match="ADMIN_API_KEY"):
            Settings(admin_api_key=bad)
    assert Settings(admin_api_key=ADMIN_KEY).admin_api_key.get_secret_value() == ADMIN_KEY


def test_admin_endpoints_are_off_without_an_admin_key(client):
    r = client.get("/v1/admin/projects")
    assert r.status_code == 401 and "ADMIN_API_KEY" in r.json()["error"]["message"]


def test_dataset_idempotency_key(client):
    content = jsonl(preference_rows(3))
    first = client.post("/v1/datasets", files={"file": ("d.jsonl", content)}, data={"kind": "preference"},
                        headers={"Idempotency-Key": "up-1"})
    again = client.post("/v1/datasets", files={"file": ("d.jsonl", content)}, data={"kind": "preference"},
                        headers={"Idempotency-Key": "up-1"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    other = client.post("/v1/datasets", files={"file": ("d.jsonl", jsonl(preference_rows(4)))},
                        data={"kind": "preference"}, headers={"Idempotency-Key": "up-1"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert len(client.get("/v1/datasets").json()["data"]) == 1


def test_first_start_bootstrap_and_create_project_command(settings):
    with session_scope(settings.database_url) as session:
        key = bootstrap_local_key(session)
    with session_scope(settings.database_url) as session:
        assert authenticate(session, key).name == "default"
        assert bootstrap_local_key(session) is None  # only on a database without projects
    env = {"DATABASE_URL": settings.database_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "core.cli", "create-project", "research"], env=env,
                         capture_output=True, text=True, check=True).stdout
    new_key = out.split("API key: ")[1].strip()
    with session_scope(settings.database_url) as session:
        assert authenticate(session, new_key).name == "research"
