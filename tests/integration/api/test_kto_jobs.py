"""KTO through the native API: feedback datasets in every format, and kto jobs on feedback or preference datasets."""

import json

import pytest

from tests.support import csv_file, jsonl, preference_rows, queued_messages, upload

FEEDBACK = [
    {"prompt": "2+2=", "completion": "4", "label": True},
    {"prompt": [{"role": "user", "content": "Capital of France?"}],
     "completion": [{"role": "assistant", "content": "Lyon."}], "label": False},
]


def _rows(client, dataset_id: str) -> list[dict]:
    return [row["data"] for row in client.get(f"/v1/datasets/{dataset_id}/rows").json()["data"]]


@pytest.fixture
def feedback_id(client) -> str:
    r = upload(client, jsonl(FEEDBACK), kind="feedback")
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_feedback_rows_upload_and_bad_ones_are_named_by_line_and_field(client, feedback_id):
    assert client.get(f"/v1/datasets/{feedback_id}").json()["kind"] == "feedback"
    assert _rows(client, feedback_id) == FEEDBACK
    r = client.post("/v1/datasets", files={"file": ("f.csv", csv_file([{"q": "2+2=", "a": "5", "good": "false"}]))},
                    data={"kind": "feedback", "column_map": json.dumps({"prompt": "q", "completion": "a",
                                                                        "label": "good"})})  # fmt: skip
    assert r.status_code == 201, r.text
    assert _rows(client, r.json()["id"]) == [{"prompt": "2+2=", "completion": "5", "label": False}]
    bad = [FEEDBACK[0], {"prompt": "q", "completion": "a", "label": "maybe"}, {"prompt": "q", "label": True}]
    r = upload(client, jsonl(bad), kind="feedback")
    assert r.status_code == 422, r.text
    assert [(d["line"], d["field"]) for d in r.json()["error"]["details"]] == [(2, "label"), (3, "completion")]


def test_kto_job_on_feedback_or_preference_data_echoes_its_resolved_hyperparameters(client, settings, feedback_id):
    preference_id = upload(client, jsonl(preference_rows(4))).json()["id"]
    ids = []
    for dataset_id, eval_id in ((feedback_id, None), (preference_id, feedback_id)):
        r = client.post("/v1/jobs", json={"type": "kto", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id,
                                          "eval_dataset_id": eval_id, "hyperparameters": {"desirable_weight": 1.33}})
        assert r.status_code == 201, r.text
        job = r.json()
        hp = job["hyperparameters"]
        assert job["type"] == "kto" and hp["desirable_weight"] == 1.33 and hp["undesirable_weight"] == 1.0
        assert (hp["beta"], hp["learning_rate"], hp["batch_size"], hp["precompute_ref_logprobs"]) == (0.1, 1e-6, 8,
                                                                                                       True)
        assert client.get(f"/v1/jobs/{job['id']}").json() == job
        ids.append(job["id"])
    assert sorted(m["args"][0] for m in queued_messages(settings)) == sorted(ids)


def test_kto_refuses_other_datasets_and_other_jobs_refuse_feedback(client, feedback_id):
    prompts = upload(client, jsonl([{"prompt": "hi"}]), kind="prompt").json()["id"]
    r = client.post("/v1/jobs", json={"type": "kto", "base_model": "builtin:tiny-llama", "dataset_id": prompts})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"
    assert "needs a feedback or preference dataset" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": feedback_id})
    assert r.status_code == 422 and "needs a preference dataset" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"type": "kto", "base_model": "builtin:tiny-llama", "dataset_id": feedback_id,
                                      "hyperparameters": {"batch_size": 1}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.batch_size"


def test_a_feedback_file_is_told_from_its_rows_and_trains_a_kto_job(client):
    r = client.post("/v1/files", files={"file": ("fb.jsonl", jsonl(FEEDBACK))}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "feedback" and r.json()["row_count"] == 2
    r = client.post("/v1/jobs", json={"type": "kto", "base_model": "builtin:tiny-llama", "dataset_id": r.json()["id"]})
    assert r.status_code == 201, r.text
