"""The admin endpoints: the project or key a path names is looked up once, and answers 404 when absent."""

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app

ADMIN_KEY = "adm-H3kP8wQ2zL6nR9tV4xB7cF1j"


@pytest.fixture
def admin(settings):
    app = create_app(settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY)}))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client


def test_unknown_project_and_key_answer_404_naming_the_path_parameter(admin):
    for r in (admin.get("/v1/admin/projects/proj_missing/keys"),
              admin.post("/v1/admin/projects/proj_missing/keys", json={"name": "k"})):
        assert r.status_code == 404
        assert r.json()["error"] == {"type": "not_found_error", "message": "no project with id 'proj_missing'",
                                     "param": "project_id", "details": []}
    r = admin.post("/v1/admin/keys/key_missing/revoke")
    assert r.status_code == 404
    assert r.json()["error"] == {"type": "not_found_error", "message": "no API key with id 'key_missing'",
                                 "param": "key_id", "details": []}


def test_the_admin_key_is_checked_before_the_lookup(admin):
    r = admin.get("/v1/admin/projects/proj_missing/keys", headers={"Authorization": "Bearer rlhf_not-a-key"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_projects_and_keys_are_listed_oldest_first_revoked_ones_too(admin):
    first = admin.post("/v1/admin/projects", json={"name": "first"})
    second = admin.post("/v1/admin/projects", json={"name": "second"})
    assert (first.status_code, second.status_code) == (201, 201)
    first, second = first.json(), second.json()
    assert (first["object"], first["name"]) == ("project", "first")
    ids = [p["id"] for p in admin.get("/v1/admin/projects").json()["data"]]
    assert ids.index(first["id"]) < ids.index(second["id"])

    a = admin.post(f"/v1/admin/projects/{first['id']}/keys", json={"name": "a"}).json()
    b = admin.post(f"/v1/admin/projects/{first['id']}/keys", json={"name": "b"}).json()
    assert (a["object"], a["name"], a["project_id"], a["revoked_at"]) == ("api_key", "a", first["id"], None)
    revoked = admin.post(f"/v1/admin/keys/{a['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = admin.post(f"/v1/admin/keys/{a['id']}/revoke").json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]  # revoking twice changes nothing

    listed = admin.get(f"/v1/admin/projects/{first['id']}/keys").json()
    assert listed["has_more"] is False
    assert [(k["id"], k["revoked_at"] is not None) for k in listed["data"]] == [(a["id"], True), (b["id"], False)]
    assert admin.get(f"/v1/admin/projects/{second['id']}/keys").json() == {"data": [], "has_more": False}
