"""Text and numbers no column can hold (NUL, lone surrogates, huge integers, overflowing cursors) on
both backends: a 4xx naming the field, parameter or header at fault, never a 5xx."""

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from tests.support import jsonl, preference_rows, upload

ADMIN_KEY = "adm-hs5Tq8Wm1Zc4Lr7Yb2Vn6Gd3"


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, jsonl(preference_rows(4))).json()["id"]


@pytest.fixture
def job_id(client, dataset_id) -> str:
    r = client.post("/v1/jobs", json=job_body(dataset_id))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def job_body(dataset_id: str, **overrides) -> dict:
    return {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id} | overrides


def post_json(client, path: str, text: str, **headers):
    """POST a JSON text as given (json.dumps escapes what httpx would refuse to encode)."""
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json", **headers})


def assert_refused(r, status: int, param: str, *words: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


def test_integer_cursors_beyond_the_column_range(client, job_id, dataset_id):
    int32 = (f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/checkpoints", f"/v1/datasets/{dataset_id}/rows")
    for path in (*int32, f"/v1/jobs/{job_id}/events"):
        for after in ("9223372036854775808", "100000000000000000000", "-100000000000000000000", "9" * 5000):
            assert_refused(client.get(path, params={"after": after}), 422, "after", "out of range")
    for path in int32:
        for after in ("2147483648", "-2147483649"):
            assert_refused(client.get(path, params={"after": after}), 422, "after", "out of range")
        for after in ("2147483647", "-2147483648"):
            assert client.get(path, params={"after": after}).status_code == 200
    for after in ("9223372036854775807", "-9223372036854775808", "3000000000"):
        assert client.get(f"/v1/jobs/{job_id}/events", params={"after": after}).status_code == 200


def test_string_cursors_that_cannot_be_ids(client):
    for after in ("job\x00x", "x" * 300, "job_../../etc"):
        for path in ("/v1/jobs", "/v1/datasets"):
            assert_refused(client.get(path, params={"after": after}), 422, "after")


def test_ids_that_cannot_be_ids_are_not_found(client):
    for bad_id in ("job%00x", "x" * 300, "a%20b", "%C3%A9"):
        assert_not_found(client, bad_id)


def assert_not_found(client, bad_id: str) -> None:
    for method, path, param in [("GET", "/v1/jobs/{}", "job_id"), ("POST", "/v1/jobs/{}/cancel", "job_id"),
                                ("GET", "/v1/jobs/{}/metrics", "job_id"), ("GET", "/v1/datasets/{}", "dataset_id"),
                                ("GET", "/v1/datasets/{}/rows", "dataset_id"),
                                ("DELETE", "/v1/datasets/{}", "dataset_id"),
                                ("GET", "/v1/checkpoints/{}", "checkpoint_id"),
                                ("GET", "/v1/checkpoints/{}/download", "checkpoint_id")]:
        assert_refused(client.request(method, path.format(bad_id)), 404, param)
    assert_refused(client.post(f"/v1/checkpoints/{bad_id}/score", json={"texts": ["a"]}), 404, "checkpoint_id")


def test_nul_characters_in_json_bodies(client, dataset_id):
    for field, value, param in [("name", "a\x00b", "name"),
                                ("base_model", "builtin:tiny\x00", "base_model"),
                                ("eval_dataset_id", "ds_\x00", "eval_dataset_id"),
                                ("metadata", {"team": "n\x00lp"}, "metadata.team"),
                                ("metadata", {"te\x00am": "nlp"}, "metadata"),
                                ("hyperparameters", {"loss_type": "sig\x00moid"}, "hyperparameters.loss_type")]:
        r = post_json(client, "/v1/jobs", json.dumps(job_body(dataset_id, **{field: value})))
        assert_refused(r, 422, param, "NUL")
    assert client.get("/v1/jobs").json()["data"] == []


def test_lone_surrogates_in_json_bodies(client, dataset_id):
    r = post_json(client, "/v1/jobs", json.dumps(job_body(dataset_id, metadata={"\ud800": "x"})))
    assert_refused(r, 422, "metadata", "surrogate")
    r = post_json(client, "/v1/graders/run", json.dumps({
        "reward": {"type": "string_check", "name": "a", "operation": "eq", "input": "x", "reference": "x"},
        "completion": "x", "item": {"answer": ["ok", "\udfff"]}}))
    assert_refused(r, 422, "item.answer[1]", "surrogate")
    # A surrogate pair is one character, not a lone surrogate.
    r = post_json(client, "/v1/jobs", json.dumps(job_body(dataset_id, name="\U0001f600")))
    assert r.status_code == 201 and r.json()["name"] == "\U0001f600"


def test_huge_integers_in_json_bodies(client, dataset_id):
    text = json.dumps(job_body(dataset_id))[:-1] + ', "hyperparameters": {"max_steps": ' + "9" * 5000 + "}}"
    assert_refused(post_json(client, "/v1/jobs", text), 422, "hyperparameters.max_steps", "5000 digits")
    for seed in (2**64, -(2**63) - 1):
        assert_refused(post_json(client, "/v1/jobs", json.dumps(job_body(dataset_id, seed=seed))), 422, "seed", "64")
    r = post_json(client, "/v1/graders/run", json.dumps({
        "reward": {"type": "string_check", "name": "a", "operation": "eq", "input": "x", "reference": "x"},
        "completion": "x", "item": {"answer": 2**70}}))
    assert_refused(r, 422, "item.answer", "64")
    assert client.get("/v1/jobs").json()["data"] == []


def test_json_bodies_that_are_not_utf8(client, dataset_id):
    text = json.dumps(job_body(dataset_id, name="caf")).encode().replace(b'"caf"', b'"caf\xe9"')
    r = client.post("/v1/jobs", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid UTF-8" in r.json()["error"]["message"]


def test_nul_characters_in_headers_query_and_form_fields(client, dataset_id):
    r = client.post("/v1/jobs", json=job_body(dataset_id), headers={"Idempotency-Key": "a\x00b"})
    assert_refused(r, 422, "idempotency-key", "NUL")
    r = client.post("/v1/datasets", files={"file": ("d.jsonl", jsonl(preference_rows(2)))},
                    data={"kind": "preference"}, headers={"Idempotency-Key": "a\x00b"})
    assert_refused(r, 422, "idempotency-key", "NUL")
    assert_refused(upload(client, jsonl(preference_rows(2)), name="a\x00b"), 422, "name", "NUL")
    assert_refused(upload_named(client, b'd\x00.jsonl'), 422, "file", "NUL")
    assert_refused(upload_named(client, b"d" * 600 + b".jsonl"), 422, "file", "512")
    assert_refused(client.get("/v1/jobs", params={"status": "queued\x00"}), 422, "status", "NUL")
    assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [dataset_id]


def upload_named(client, filename: bytes):
    """An upload whose multipart file name is sent byte for byte (httpx would escape it)."""
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="kind"\r\n\r\npreference\r\n--'
            + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename
            + b'"\r\n\r\n' + jsonl(preference_rows(2)) + b"\r\n--" + boundary + b"--\r\n")
    return client.post("/v1/datasets", content=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"})


def test_admin_names_and_ids(settings):
    app = create_app(settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY)}))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        assert_refused(admin.post("/v1/admin/projects", json={"name": "p\x00"}), 422, "name", "NUL")
        project = admin.post("/v1/admin/projects", json={"name": "p"}).json()["id"]
        r = admin.post(f"/v1/admin/projects/{project}/keys", json={"name": "k\x00"})
        assert_refused(r, 422, "name", "NUL")
        assert_refused(admin.post("/v1/admin/projects/p%00/keys", json={}), 404, "project_id")
        assert_refused(admin.get("/v1/admin/projects/p%00/keys"), 404, "project_id")
        assert_refused(admin.post("/v1/admin/keys/k%00/revoke"), 404, "key_id")
        assert [p["name"] for p in admin.get("/v1/admin/projects").json()["data"]][-1] == "p"
