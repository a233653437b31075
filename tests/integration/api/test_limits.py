"""Hostile and oversized input: clear 413/422 answers naming the limit, never a 5xx, nothing stored."""

import json

import pytest
from fastapi.testclient import TestClient

from api.limits import json_depth
from api.main import create_app
from tests.support import jsonl, preference_rows, upload

LIMITS = {"max_upload_bytes": 4000, "max_dataset_rows": 5, "max_row_bytes": 600,
          "max_json_body_bytes": 3000, "max_json_depth": 8}


@pytest.fixture
def small(settings, project_key):
    with TestClient(create_app(settings.model_copy(update=LIMITS)),
                    headers={"Authorization": f"Bearer {project_key}"}) as client:
        yield client


def stored_datasets(client) -> int:
    return len(client.get("/v1/datasets").json()["data"])


def test_upload_over_the_size_limit(small):
    r = upload(small, jsonl(preference_rows(80)))
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["type"] == "request_too_large" and err["param"] == "file" and "MAX_UPLOAD_BYTES" in err["message"]
    assert stored_datasets(small) == 0


def test_chunked_upload_without_length_is_cut_off(small):
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\npreference\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(40):
            yield jsonl(preference_rows(2))
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small.post("/v1/datasets", content=body(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
    assert stored_datasets(small) == 0


def test_too_many_rows_and_too_long_a_row(small):
    r = upload(small, jsonl(preference_rows(6)))
    assert r.status_code == 413 and "MAX_DATASET_ROWS" in r.json()["error"]["message"]
    long_row = dict(preference_rows(1)[0], chosen="x" * 700)
    r = upload(small, jsonl([preference_rows(1)[0], long_row]))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["line"] == 2
    assert stored_datasets(small) == 0
    assert upload(small, jsonl(preference_rows(5))).status_code == 201


def test_json_body_size_and_depth(small):
    r = small.post("/v1/jobs", json={"type": "dpo", "base_model": "x" * 5000, "dataset_id": "ds"})
    assert r.status_code == 413 and "MAX_JSON_BODY_BYTES" in r.json()["error"]["message"]
    nested: object = "deep"
    for _ in range(20):
        nested = {"a": nested}
    r = small.post("/v1/jobs", json={"type": "dpo", "base_model": "m", "dataset_id": "ds", "metadata": nested})
    assert r.status_code == 422 and "nested" in r.json()["error"]["message"]
    r = small.post("/v1/jobs", content=b"[" * 2000, headers={"Content-Type": "application/json"})
    assert r.status_code in (413, 422)


def test_deep_json_at_default_limits_is_a_clean_error(client):
    body = b'{"type": "dpo", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[{{"}]}') == 3
    assert json_depth(json.dumps({"a": "\\\"[[["}).encode()) == 1
    assert json_depth(b"1") == 0


def test_oversized_fields_are_validation_errors(client):
    ds = upload(client, jsonl(preference_rows(3))).json()["id"]
    cases = [({"name": "n" * 300}, "name"), ({"base_model": "m" * 600}, "base_model"),
             ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
             ({"hyperparameters": {"max_steps": 10**9}}, "hyperparameters.max_steps"),
             ({"hyperparameters": {"max_length": 10**6}}, "hyperparameters.max_length")]
    for extra, param in cases:
        body = {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": ds} | extra
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["param"] == param, (param, r.text)
