"""The POST /v1/jobs bodies are the trainers' job models plus the service's fields, one per job type."""

import pytest
from pydantic import TypeAdapter, ValidationError

from api.schemas import JOB_CREATE_MODELS, JobCreate, JobRequest, PTXJobRequest, job_request_model
from trainers.spec.config import JOB_MODELS, JOB_TYPES, PPOJob

REWARD = {"type": "string_check", "name": "a", "operation": "contains", "reference": "x"}
BODY = {"base_model": "builtin:tiny-llama", "dataset_id": "ds_1"}


def test_one_request_model_per_job_type_of_the_union():
    assert [m.model_fields["type"].annotation.__args__ for m in JOB_CREATE_MODELS] == [(t,) for t in JOB_TYPES]
    assert [m.__name__ for m in JOB_CREATE_MODELS] == ["DPOJobCreate", "ORPOJobCreate", "RewardModelJobCreate",
                                                       "GRPOJobCreate", "PPOJobCreate", "SFTJobCreate", "KTOJobCreate"]


@pytest.mark.parametrize("job_model", JOB_MODELS)
def test_a_request_has_the_job_models_fields_less_the_services_and_the_same_bounds(job_model):
    request = job_request_model(job_model)
    user_fields = set(job_model.model_fields) - job_model.service_fields
    assert set(request.model_fields) == user_fields | set(JobRequest.model_fields) | (
        {"ptx_dataset_id"} if job_model is PPOJob else set())
    for name in user_fields - set(JobRequest.model_fields) - {"type"}:  # lora, hyperparameters, reward
        mine, theirs = request.model_fields[name], job_model.model_fields[name]
        assert (mine.annotation, mine.metadata, mine.default, mine.default_factory, mine.description) == (
            theirs.annotation, theirs.metadata, theirs.default, theirs.default_factory, theirs.description)
    assert request.model_fields["hyperparameters"].annotation is job_model.model_fields["hyperparameters"].annotation
    assert request.model_fields["type"].is_required() and request.__doc__ == job_model.__doc__


def test_the_seed_bounds_are_the_trainers():
    adapter = TypeAdapter(JobCreate)
    assert adapter.validate_python(BODY | {"type": "dpo", "seed": 2**32 - 1}).seed == 2**32 - 1
    assert adapter.validate_python(BODY | {"type": "dpo"}).seed is None  # the service picks one
    for seed in (2**32, -1):
        with pytest.raises(ValidationError) as info:
            adapter.validate_python(BODY | {"type": "dpo", "seed": seed})
        assert info.value.errors()[0]["loc"] == ("dpo", "seed")


def test_service_only_fields_are_the_services_and_only_ppo_takes_a_ptx_dataset():
    adapter = TypeAdapter(JobCreate)
    job = adapter.validate_python(BODY | {"type": "ppo", "reward": REWARD, "ptx_dataset_id": "ds_2",
                                          "name": "n", "metadata": {"a": "b"}})
    assert isinstance(job, PTXJobRequest) and (job.ptx_dataset_id, job.name, job.metadata) == ("ds_2", "n", {"a": "b"})
    with pytest.raises(ValidationError) as info:
        adapter.validate_python(BODY | {"type": "grpo", "reward": REWARD, "ptx_dataset_id": "ds_2"})
    assert info.value.errors()[0]["loc"] == ("grpo", "ptx_dataset_id")
    with pytest.raises(ValidationError) as info:
        adapter.validate_python(BODY | {"type": "ppo", "reward": REWARD, "reward_model_dirs": {"c": "/etc"}})
    assert info.value.errors()[0]["loc"] == ("ppo", "reward_model_dirs")
