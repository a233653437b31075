"""GRPO jobs with DAPO's dynamic sampling and overlong shaping through the service: stored, echoed, and given
to the trainers as the worker gives them; a buffer that leaves no room is 422 naming the field."""

import pytest

from core.db import session_scope
from core.job_config import job_config
from core.models import Job
from tests.support import jsonl, upload

CONTAINS = {"type": "string_check", "name": "has_answer", "operation": "contains",
            "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
DAPO = {"dynamic_sampling": True, "max_sampling_rounds": 4, "overlong_buffer": 16, "overlong_penalty_factor": 0.5}


@pytest.fixture
def prompts(client) -> str:
    return upload(client, jsonl([{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}]),
                  kind="prompt").json()["id"]


def test_a_grpo_job_with_dapos_options_reaches_the_trainers_config(client, settings, prompts):
    body = {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": prompts, "reward": CONTAINS,
            "hyperparameters": DAPO}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    assert {k: r.json()["hyperparameters"][k] for k in DAPO} == DAPO
    with session_scope(settings.database_url) as session:
        config = job_config(session.get(Job, r.json()["id"]))
    assert config.hyperparameters.model_dump(include=set(DAPO)) == DAPO


def test_an_overlong_buffer_as_long_as_the_completion_is_422(client, prompts):
    body = {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": prompts, "reward": CONTAINS,
            "hyperparameters": {"max_new_tokens": 16, "overlong_buffer": 16}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "hyperparameters.overlong_buffer"
    assert "must be less than max_new_tokens (16)" in r.json()["error"]["message"]
