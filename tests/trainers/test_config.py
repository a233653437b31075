import pytest
from pydantic import ValidationError

from trainers.config import DPOHyperparameters, DPOJob, JobConfig


def test_defaults_follow_the_dpo_paper():
    hp = DPOHyperparameters()
    assert hp.learning_rate == 1e-6 and hp.beta == 0.1 and hp.loss_type == "sigmoid"
    assert hp.max_prompt_length < hp.max_length
    assert DPOJob(base_model="builtin:tiny-llama").hyperparameters == hp


def test_every_field_is_documented():
    for model in (DPOHyperparameters, DPOJob):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_prompt_must_be_shorter_than_total_and_the_error_names_the_field():
    with pytest.raises(ValidationError) as info:
        DPOHyperparameters(max_length=64, max_prompt_length=64)
    (error,) = info.value.errors()
    assert error["loc"] == ("max_prompt_length",)
    assert "max_prompt_length" in error["msg"]


@pytest.mark.parametrize(
    "field, value",
    [("learning_rate", 0.0), ("learning_rate", 2.0), ("batch_size", 0), ("max_steps", 0), ("max_length", 4),
     ("weight_decay", -0.1), ("max_grad_norm", 0.0), ("loss_type", "ipo"), ("unknown_field", 1)],
)  # fmt: skip
def test_out_of_bounds_values_are_rejected(field, value):
    with pytest.raises(ValidationError):
        DPOHyperparameters(**{field: value})


def test_job_forbids_extra_fields_and_is_the_job_config():
    assert JobConfig is DPOJob
    with pytest.raises(ValidationError):
        DPOJob(base_model="builtin:tiny-llama", lr=1.0)
    job = DPOJob.model_validate({"base_model": "x", "hyperparameters": {"max_steps": 3}})
    assert job.type == "dpo" and job.hyperparameters.max_steps == 3 and job.seed == 0
