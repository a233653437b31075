"""PPO/GRPO job specs and the grader dry run, on both backends: what works, and each bad spec named."""

import pytest

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import claim_job
from tests.support import jsonl, new_project_key, preference_rows, upload
from worker.reporting import JobReporter

CONTAINS = {"type": "string_check", "name": "has_answer", "operation": "contains",
            "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


@pytest.fixture
def prompts(client) -> str:
    return upload(client, jsonl([{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}]),
                  kind="prompt").json()["id"]


def checkpoint_of_kind(client, settings, kind: str) -> str:
    """A finished job of this project with one checkpoint holding a model of `kind`."""
    ds = upload(client, jsonl(preference_rows(4))).json()["id"]
    job = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": ds}).json()
    with session_scope(settings.database_url) as session:
        lease = claim_job(session, job["id"], "w1")

    def save(directory):
        (directory / "model").mkdir()

    JobReporter(url=settings.database_url, lease=lease, store=ArtifactStore(settings.artifacts_dir)) \
        .on_checkpoint(1, save, {"metrics": {}, "model": {"kind": kind, "adapter": False}})
    return client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"][0]["id"]


def rl_job(dataset_id: str, **fields) -> dict:
    return {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id, "reward": CONTAINS} | fields


def test_grpo_and_ppo_jobs_echo_their_reward_and_settings(client, prompts):
    r = client.post("/v1/jobs", json=rl_job(prompts, hyperparameters={"num_generations": 4, "batch_size": 32}))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["reward"]["operation"] == "contains" and job["reward"]["weight"] == 1.0
    assert job["hyperparameters"]["num_generations"] == 4 and "epsilon_high" in job["hyperparameters"]
    r = client.post("/v1/jobs", json=rl_job(prompts, type="ppo"))
    assert r.status_code == 201, r.text
    assert r.json()["hyperparameters"]["lam"] == 0.95 and r.json()["type"] == "ppo"


def test_a_reward_model_checkpoint_is_accepted(client, settings, prompts):
    rm = checkpoint_of_kind(client, settings, "reward_model")
    reward = {"type": "multi", "name": "total", "graders": [
        {"type": "model", "name": "rm", "checkpoint_id": rm, "weight": 0.5}, CONTAINS]}
    r = client.post("/v1/jobs", json=rl_job(prompts, type="ppo", reward=reward,
                                            hyperparameters={"value_model": "reward_model"}))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("change", "param"), [
    ({"reward": None}, "reward"),
    ({"reward": CONTAINS | {"operation": "regex", "reference": "(unclosed"}}, "reward.reference"),
    ({"reward": {"type": "function", "name": "f", "function": "no_such_function"}}, "reward.function"),
    ({"reward": {"type": "multi", "name": "m", "graders": [CONTAINS, CONTAINS | {"name": "x", "input": "{{oops}}"}]}},
     "reward.graders[1].input"),
    ({"reward": {"type": "model", "checkpoint_id": "ckpt_missing"}}, "reward.checkpoint_id"),
    ({"type": "ppo", "hyperparameters": {"value_model": "reward_model"}}, "reward"),
    ({"type": "ppo", "hyperparameters": {"lam": 2}}, "hyperparameters.lam"),
    ({"hyperparameters": {"num_generations": 1}}, "hyperparameters.num_generations"),
])
def test_bad_specs_are_422_naming_the_field(client, prompts, change, param):
    body = rl_job(prompts, **change)
    if body["reward"] is None:
        del body["reward"]
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_reward_checkpoints_must_be_this_projects_reward_models(app_client_factory, client, settings, prompts):
    not_rm = checkpoint_of_kind(client, settings, "causal_lm")
    r = client.post("/v1/jobs", json=rl_job(prompts, reward={"type": "model", "checkpoint_id": not_rm}))
    assert r.status_code == 422 and "not a reward model" in r.json()["error"]["message"]
    rm = checkpoint_of_kind(client, settings, "reward_model")
    with app_client_factory(new_project_key(settings, "other")) as other:
        theirs = upload(other, jsonl([{"prompt": "hi"}]), kind="prompt").json()["id"]
        r = other.post("/v1/jobs", json=rl_job(theirs, reward={"type": "model", "checkpoint_id": rm}))
        assert r.status_code == 422 and r.json()["error"]["param"] == "reward.checkpoint_id"


def test_rl_jobs_need_a_prompt_dataset(client):
    preference = upload(client, jsonl(preference_rows(3))).json()["id"]
    r = client.post("/v1/jobs", json=rl_job(preference))
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_id"


def test_grader_dry_run(client):
    r = client.post("/v1/graders/run", json={"reward": CONTAINS, "completion": "it is 4", "item": {"answer": "4"}})
    assert r.status_code == 200, r.text
    assert r.json() == {"reward": 1.0, "per_grader": {"has_answer": 1.0}, "errors": []}
    r = client.post("/v1/graders/run", json={"reward": CONTAINS, "completion": "it is 4", "item": {}})
    body = r.json()
    assert body["reward"] == 0.0 and "answer" in body["errors"][0]
    multi = {"type": "multi", "name": "m", "graders": [
        {"type": "model", "name": "rm", "checkpoint_id": "ckpt_x", "weight": 0.5},
        {"type": "length", "name": "short", "max_chars": 10, "weight": 2.0}]}
    r = client.post("/v1/graders/run", json={"reward": multi, "completion": "tiny", "model_scores": {"ckpt_x": 3.0}})
    assert r.json()["reward"] == pytest.approx(0.5 * 3.0 + 2.0 * 1.0)
    r = client.post("/v1/graders/run", json={"reward": {"type": "function", "name": "f", "function": "nope"},
                                             "completion": "x"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "reward.function"
    r = client.post("/v1/graders/run", json={"reward": {"type": "function", "name": "f", "function": "exact_match"},
                                             "completion": "Four ", "item": {"answer": "four"}})
    assert r.json()["reward"] == 1.0


def test_ppo_ptx_takes_a_text_dataset(client, prompts):
    texts = upload(client, jsonl([{"text": "Once upon a time."}, {"text": "The end."}]), kind="text")
    assert texts.status_code == 201, texts.text
    text_id = texts.json()["id"]
    ok = client.post("/v1/jobs", json=rl_job(prompts, type="ppo", ptx_dataset_id=text_id,
                                             hyperparameters={"ptx_coef": 0.5}))
    assert ok.status_code == 201 and ok.json()["ptx_dataset_id"] == text_id
    cases = [({"hyperparameters": {"ptx_coef": 0.5}}, "ptx_dataset_id"),
             ({"ptx_dataset_id": text_id}, "hyperparameters.ptx_coef"),
             ({"ptx_dataset_id": prompts, "hyperparameters": {"ptx_coef": 0.5}}, "ptx_dataset_id")]
    for change, param in cases:
        r = client.post("/v1/jobs", json=rl_job(prompts, type="ppo", **change))
        assert r.status_code == 422 and r.json()["error"]["param"] == param, (param, r.text)
    assert client.delete(f"/v1/datasets/{text_id}").status_code == 409  # the queued job uses it
    bad = upload(client, jsonl([{"text": ""}]), kind="text")
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "text"
