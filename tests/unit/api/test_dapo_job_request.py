"""POST /v1/jobs takes DAPO's options of GRPO jobs with the trainers' bounds, and Swagger describes them."""

import pytest
from pydantic import TypeAdapter, ValidationError

from api.main import app
from api.schemas import JobCreate

BODY = {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": "ds_1",
        "reward": {"type": "string_check", "name": "a", "operation": "contains", "reference": "x"}}  # fmt: skip


def test_a_grpo_job_request_takes_dynamic_sampling_and_overlong_shaping():
    hp = {"dynamic_sampling": True, "max_sampling_rounds": 5, "overlong_buffer": 16, "overlong_penalty_factor": 0.5}
    job = TypeAdapter(JobCreate).validate_python(BODY | {"hyperparameters": hp})
    assert job.hyperparameters.model_dump(include=set(hp)) == hp
    defaults = TypeAdapter(JobCreate).validate_python(BODY).hyperparameters
    assert (defaults.dynamic_sampling, defaults.max_sampling_rounds, defaults.overlong_buffer) == (False, 3, None)


@pytest.mark.parametrize(("hp", "field"), [
    ({"max_new_tokens": 32, "overlong_buffer": 32}, "overlong_buffer"),
    ({"max_sampling_rounds": 0}, "max_sampling_rounds"),
    ({"overlong_penalty_factor": -1}, "overlong_penalty_factor"),
])  # fmt: skip
def test_out_of_bounds_options_name_their_field(hp, field):
    with pytest.raises(ValidationError) as info:
        TypeAdapter(JobCreate).validate_python(BODY | {"hyperparameters": hp})
    assert info.value.errors()[0]["loc"] == ("grpo", "hyperparameters", field)


def test_swagger_describes_the_options_with_their_paper():
    properties = app.openapi()["components"]["schemas"]["GRPOHyperparameters"]["properties"]
    assert properties["dynamic_sampling"]["default"] is False and "Yu et al. 2025" in properties["dynamic_sampling"][
        "description"]
    assert properties["max_sampling_rounds"]["default"] == 3
    assert "eq. 13" in properties["overlong_buffer"]["description"]
    assert properties["overlong_penalty_factor"]["default"] == 1.0
