"""POST /v1/jobs takes GRPO's advantage estimators and GSPO's importance-sampling level; Swagger describes them."""

import pytest
from pydantic import TypeAdapter, ValidationError

from api.main import app
from api.schemas import JobCreate

BODY = {"type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": "ds_1",
        "reward": {"type": "string_check", "name": "a", "operation": "contains", "reference": "x"}}  # fmt: skip


def test_a_grpo_job_request_takes_the_estimator_and_the_importance_sampling_level():
    hp = {"advantage_estimator": "rloo", "normalize_advantages": True, "importance_sampling_level": "sequence"}
    job = TypeAdapter(JobCreate).validate_python(BODY | {"hyperparameters": hp})
    assert job.hyperparameters.model_dump(include=set(hp)) == hp
    defaults = TypeAdapter(JobCreate).validate_python(BODY).hyperparameters
    assert (defaults.advantage_estimator, defaults.normalize_advantages, defaults.importance_sampling_level) == (
        "grpo", False, "token")


@pytest.mark.parametrize(("hp", "field"), [
    ({"advantage_estimator": "ppo"}, "advantage_estimator"),
    ({"importance_sampling_level": "word"}, "importance_sampling_level"),
    ({"advantage_estimator": "reinforce_pp", "normalize_advantages": True}, "normalize_advantages"),
])  # fmt: skip
def test_bad_options_name_their_field(hp, field):
    with pytest.raises(ValidationError) as info:
        TypeAdapter(JobCreate).validate_python(BODY | {"hyperparameters": hp})
    assert info.value.errors()[0]["loc"] == ("grpo", "hyperparameters", field)


def test_swagger_describes_the_options_with_their_papers():
    properties = app.openapi()["components"]["schemas"]["GRPOHyperparameters"]["properties"]
    estimator = properties["advantage_estimator"]
    assert estimator["default"] == "grpo" and set(estimator["enum"]) == {"grpo", "rloo", "reinforce_pp"}
    assert "2402.14740" in estimator["description"] and "2501.03262" in estimator["description"]
    level = properties["importance_sampling_level"]
    assert level["default"] == "token" and "2507.18071" in level["description"] and "3e-4" in level["description"]
    assert "in the reward" in properties["beta"]["description"]

