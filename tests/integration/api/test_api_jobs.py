"""Job endpoints on both backends: creation, validation, idempotency, the queue, listing, cancel."""


import pytest

from core.db import session_scope
from core.job_config import job_config
from core.lifecycle import transition
from core.models import Job, JobStatus
from tests.support import jsonl, preference_rows, queued_messages, upload
from trainers.spec.config import DPOHyperparameters, DPOJob, LoRAConfig


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, jsonl(preference_rows(4))).json()["id"]


def job_body(dataset_id: str, **overrides) -> dict:
    return {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id} | overrides


def test_create_echoes_resolved_hyperparameters_and_enqueues(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=job_body(dataset_id, hyperparameters={"beta": 0.2}, seed=7,
                                              name="first", metadata={"team": "nlp"}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["seed"] == 7 and job["metadata"] == {"team": "nlp"}
    hp = job["hyperparameters"]
    assert hp["beta"] == 0.2 and hp["learning_rate"] == 1e-6 and hp["loss_type"] == "sigmoid"
    assert queued_messages(settings) == [{"id": job["id"], "task": "worker.run_job", "args": [job["id"]]}]
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_precision_and_memory_settings_default_to_auto_and_are_echoed(client, dataset_id):
    hp = client.post("/v1/jobs", json=job_body(dataset_id)).json()["hyperparameters"]
    assert (hp["precision"], hp["attn_implementation"], hp["gradient_checkpointing"]) == ("auto", "auto", False)
    chosen = {"precision": "bf16", "attn_implementation": "eager", "gradient_checkpointing": True}
    for job_type in ("dpo", "reward_model"):
        r = client.post("/v1/jobs", json=job_body(dataset_id, type=job_type, hyperparameters=chosen))
        assert r.status_code == 201, r.text
        assert {k: r.json()["hyperparameters"][k] for k in chosen} == chosen


def test_seed_is_chosen_when_absent(client, dataset_id):
    job = client.post("/v1/jobs", json=job_body(dataset_id)).json()
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**31


@pytest.mark.parametrize(("hyperparameters", "param"), [
    ({"beta": 0}, "hyperparameters.beta"),
    ({"learning_rate": 5}, "hyperparameters.learning_rate"),
    ({"max_steps": 10**9}, "hyperparameters.max_steps"),
    ({"max_length": 64, "max_prompt_length": 64}, "hyperparameters.max_prompt_length"),
    ({"loss_type": "nope"}, "hyperparameters.loss_type"),
    ({"unknown": 1}, "hyperparameters.unknown"),
    ({"precision": "fp8"}, "hyperparameters.precision"),
    ({"attn_implementation": "flash"}, "hyperparameters.attn_implementation"),
    ({"gradient_checkpointing": "sometimes"}, "hyperparameters.gradient_checkpointing"),
])
def test_bad_hyperparameter_names_the_field(client, dataset_id, hyperparameters, param):
    r = client.post("/v1/jobs", json=job_body(dataset_id, hyperparameters=hyperparameters))
    assert r.status_code == 422
    assert r.json()["error"]["param"] == param


def test_spec_errors(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=job_body("ds_unknown"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
    r = client.post("/v1/jobs", json=job_body(dataset_id, eval_dataset_id="ds_unknown"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "eval_dataset_id"
    prompts = upload(client, jsonl([{"prompt": "hi"}]), kind="prompt").json()["id"]
    r = client.post("/v1/jobs", json=job_body(prompts))
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"
    for ref in ("../etc", "/abs/path", "checkpoint:ckpt_unknown"):
        r = client.post("/v1/jobs", json=job_body(dataset_id, base_model=ref))
        assert r.status_code == 422 and r.json()["error"]["param"] == "base_model", ref
    r = client.post("/v1/jobs", json=job_body(dataset_id, type="xpo"))
    assert r.status_code == 422 and r.json()["error"]["param"] == "type"
    r = client.post("/v1/jobs", json=job_body(dataset_id, colour="red"))
    assert r.status_code == 422 and r.json()["error"]["param"] == "colour"
    assert queued_messages(settings) == []


def test_idempotency_key(client, settings, dataset_id):
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", json=job_body(dataset_id, seed=1), headers=headers)
    again = client.post("/v1/jobs", json=job_body(dataset_id, seed=1), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json=job_body(dataset_id, seed=2), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert len(queued_messages(settings)) == 1


def test_list_filters_and_pagination(client, settings, dataset_id):
    ids = [client.post("/v1/jobs", json=job_body(dataset_id)).json()["id"] for _ in range(3)]
    with session_scope(settings.database_url) as session:
        transition(session, ids[0], JobStatus.running)
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"]
    rest = client.get("/v1/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    running = client.get("/v1/jobs", params={"status": "running"}).json()["data"]
    assert [j["id"] for j in running] == [ids[0]]
    assert len(client.get("/v1/jobs", params={"type": "dpo"}).json()["data"]) == 3
    assert client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
    assert client.get("/v1/jobs/job_unknown").status_code == 404


def test_cancel(client, settings, dataset_id):
    queued = client.post("/v1/jobs", json=job_body(dataset_id)).json()["id"]
    r = client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    r = client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"

    running = client.post("/v1/jobs", json=job_body(dataset_id)).json()["id"]
    with session_scope(settings.database_url) as session:
        transition(session, running, JobStatus.running)
    assert client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "cancelling"
    assert client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "cancelling"

    done = client.post("/v1/jobs", json=job_body(dataset_id)).json()["id"]
    with session_scope(settings.database_url) as session:
        transition(session, done, JobStatus.running)
        transition(session, done, JobStatus.succeeded)
    assert client.post(f"/v1/jobs/{done}/cancel").status_code == 409
    assert client.post("/v1/jobs/job_unknown/cancel").status_code == 404
    events = client.get(f"/v1/jobs/{queued}/events").json()["data"]
    assert [e["data"]["status"] for e in events] == ["cancelled"]


def test_enqueue_failure_creates_nothing_and_answers_503(settings, dataset_id, project_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    broken = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken), headers={"Authorization": f"Bearer {project_key}"}) as client:
        r = client.post("/v1/jobs", json=job_body(dataset_id), headers={"Idempotency-Key": "k1"})
        assert r.status_code == 503 and r.headers["Retry-After"] and "nothing was created" in r.text
        assert client.get("/v1/jobs").json()["data"] == []
    # the same request, retried once the broker is back, creates the job
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {project_key}"}) as client:
        r = client.post("/v1/jobs", json=job_body(dataset_id), headers={"Idempotency-Key": "k1"})
        assert r.status_code == 201


def test_reward_model_job_with_lora_echoes_resolved_settings(client, dataset_id):
    r = client.post("/v1/jobs", json=job_body(dataset_id, type="reward_model", lora={"r": 4},
                                              hyperparameters={"center_rewards_coefficient": 0.01}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["type"] == "reward_model"
    assert job["hyperparameters"]["center_rewards_coefficient"] == 0.01
    assert job["hyperparameters"]["learning_rate"] == 1e-5 and "beta" not in job["hyperparameters"]
    assert job["lora"] == {"r": 4, "alpha": 32.0, "dropout": 0.05, "target_modules": None}
    assert client.get("/v1/jobs", params={"type": "reward_model"}).json()["data"][0]["id"] == job["id"]
    assert client.post("/v1/jobs", json=job_body(dataset_id)).json()["lora"] is None


@pytest.mark.parametrize(("body", "param"), [
    ({"type": "reward_model", "hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"type": "reward_model", "hyperparameters": {"center_rewards_coefficient": -1}},
     "hyperparameters.center_rewards_coefficient"),
    ({"type": "dpo", "hyperparameters": {"loss_type": "hinge", "label_smoothing": 0.1}},
     "hyperparameters.label_smoothing"),
    ({"type": "dpo", "lora": {"r": 0}}, "lora.r"),
    ({"type": "dpo", "lora": {"target_modules": []}}, "lora.target_modules"),
    ({"type": "ppo-ish"}, "type"),
])
def test_job_type_specific_errors_name_the_field(client, dataset_id, body, param):
    r = client.post("/v1/jobs", json=job_body(dataset_id) | body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_every_seed_the_trainers_take_is_stored_and_read_back(client, settings, dataset_id):
    for seed in (0, 2**31, 2**32 - 1):
        r = client.post("/v1/jobs", json=job_body(dataset_id, seed=seed))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.json()["seed"] == seed and client.get(f"/v1/jobs/{job_id}").json()["seed"] == seed
        with session_scope(settings.database_url) as session:
            assert job_config(session.get(Job, job_id)).seed == seed
    r = client.post("/v1/jobs", json=job_body(dataset_id, seed=2**32))
    assert r.status_code == 422 and r.json()["error"]["param"] == "seed"
    assert "4294967295" in r.json()["error"]["message"]


def test_a_stored_job_converts_to_the_trainers_job_model(client, settings, dataset_id):
    r = client.post("/v1/jobs", json=job_body(dataset_id, seed=11, lora={"r": 4},
                                              hyperparameters={"beta": 0.3, "max_steps": 5}))
    assert r.status_code == 201, r.text
    with session_scope(settings.database_url) as session:
        config = job_config(session.get(Job, r.json()["id"]))
    assert config == DPOJob(base_model="builtin:tiny-llama", seed=11, lora=LoRAConfig(r=4),
                            hyperparameters=DPOHyperparameters(beta=0.3, max_steps=5))


def test_fields_the_service_fills_in_are_not_taken_from_a_request(client, dataset_id):
    prompts = upload(client, jsonl([{"prompt": "hi"}]), kind="prompt").json()["id"]
    reward = {"type": "string_check", "name": "a", "operation": "contains", "reference": "x"}
    for field, value in (("reward_model_dirs", {"ckpt_x": "/tmp"}), ("reward_function_modules", ["os"])):
        r = client.post("/v1/jobs", json=job_body(prompts, type="grpo", reward=reward) | {field: value})
        assert r.status_code == 422 and r.json()["error"]["param"] == field


def test_processes_and_strategy_are_stored_echoed_and_reach_the_trainers(client, settings, dataset_id):
    default = client.post("/v1/jobs", json=job_body(dataset_id)).json()
    assert (default["processes"], default["strategy"]) == (1, "auto")
    r = client.post("/v1/jobs", json=job_body(dataset_id, processes=2, strategy="fsdp"))
    assert r.status_code == 201, r.text
    assert (r.json()["processes"], r.json()["strategy"]) == (2, "fsdp")
    assert client.get(f"/v1/jobs/{r.json()['id']}").json() == r.json()
    with session_scope(settings.database_url) as session:
        config = job_config(session.get(Job, r.json()["id"]))
    assert (config.processes, config.strategy) == (2, "fsdp")


def test_a_job_asking_more_processes_than_a_worker_has_is_refused_naming_processes(settings, dataset_id,
                                                                                     project_key):
    from fastapi.testclient import TestClient

    from api.main import create_app

    two = settings.model_copy(update={"worker_devices": 2})
    with TestClient(create_app(two), headers={"Authorization": f"Bearer {project_key}"}) as client:
        assert client.post("/v1/jobs", json=job_body(dataset_id, processes=2)).status_code == 201
        r = client.post("/v1/jobs", json=job_body(dataset_id, processes=3))
        assert r.status_code == 422 and r.json()["error"]["param"] == "processes"
        assert "3 processes" in r.json()["error"]["message"] and "WORKER_DEVICES" in r.json()["error"]["message"]
        for body, param in [({"processes": 0}, "processes"), ({"strategy": "zero"}, "strategy")]:
            r = client.post("/v1/jobs", json=job_body(dataset_id, **body))
            assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text
        assert len(client.get("/v1/jobs").json()["data"]) == 1
