"""Reference-free preference jobs through POST /v1/jobs: ORPO jobs, DPO's simpo and orpo losses, defaults resolved."""

import pytest

from core.db import session_scope
from core.job_config import job_config
from core.models import Job
from tests.support import jsonl, preference_rows, upload
from trainers.spec.config import DPOHyperparameters, DPOJob, ORPOHyperparameters, ORPOJob


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, jsonl(preference_rows(4))).json()["id"]


def job_body(dataset_id: str, **overrides) -> dict:
    return {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id} | overrides


def test_an_orpo_job_is_accepted_with_its_defaults_echoed_and_stored(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=job_body(dataset_id, type="orpo", seed=3, hyperparameters={"max_steps": 5}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["type"] == "orpo" and job["status"] == "queued"
    hp = job["hyperparameters"]
    assert (hp["beta"], hp["learning_rate"], hp["max_steps"]) == (0.1, 1e-6, 5)
    # ORPO has no reference and no loss choice: nothing of DPO's reference settings is echoed or taken.
    assert not {"loss_type", "precompute_ref_logprobs", "label_smoothing", "simpo_gamma"} & set(hp)
    with session_scope(settings.database_url) as session:
        assert job_config(session.get(Job, job["id"])) == ORPOJob(
            base_model="builtin:tiny-llama", seed=3, hyperparameters=ORPOHyperparameters(max_steps=5))
    r = client.post("/v1/jobs", json=job_body(dataset_id, type="orpo", hyperparameters={"loss_type": "simpo"}))
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.loss_type"


@pytest.mark.parametrize(("loss_type", "beta"), [("simpo", 2.0), ("orpo", 0.1), ("sigmoid", 0.1), ("ipo", 0.1)])
def test_a_dpo_jobs_beta_left_out_is_its_loss_types_default_echoed(client, settings, dataset_id, loss_type, beta):
    r = client.post("/v1/jobs", json=job_body(dataset_id, hyperparameters={"loss_type": loss_type}))
    assert r.status_code == 201, r.text
    hp = r.json()["hyperparameters"]
    assert (hp["loss_type"], hp["beta"], hp["simpo_gamma"]) == (loss_type, beta, 0.5)
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["hyperparameters"] == hp
    with session_scope(settings.database_url) as session:
        config = job_config(session.get(Job, r.json()["id"]))
    assert config == DPOJob(base_model="builtin:tiny-llama", seed=config.seed,
                            hyperparameters=DPOHyperparameters(loss_type=loss_type, beta=beta))


def test_simpo_settings_are_echoed_and_checked(client, dataset_id):
    chosen = {"loss_type": "simpo", "beta": 2.5, "simpo_gamma": 1.4, "label_smoothing": 0.1}
    r = client.post("/v1/jobs", json=job_body(dataset_id, hyperparameters=chosen))
    assert r.status_code == 201, r.text
    assert {k: r.json()["hyperparameters"][k] for k in chosen} == chosen
    for bad, param in (({"loss_type": "simpo", "simpo_gamma": -1}, "hyperparameters.simpo_gamma"),
                       ({"loss_type": "orpo", "label_smoothing": 0.1}, "hyperparameters.label_smoothing")):
        r = client.post("/v1/jobs", json=job_body(dataset_id, hyperparameters=bad))
        assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text
