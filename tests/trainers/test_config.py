import pytest
from pydantic import TypeAdapter, ValidationError

from trainers.config import (
    DPOHyperparameters,
    DPOJob,
    JobConfig,
    LoRAConfig,
    RewardModelHyperparameters,
    RewardModelJob,
)


def test_defaults_follow_the_dpo_paper():
    hp = DPOHyperparameters()
    assert hp.learning_rate == 1e-6 and hp.beta == 0.1 and hp.loss_type == "sigmoid"
    assert hp.max_prompt_length < hp.max_length
    assert DPOJob(base_model="builtin:tiny-llama").hyperparameters == hp


def test_every_field_is_documented():
    for model in (DPOHyperparameters, DPOJob, RewardModelHyperparameters, RewardModelJob, LoRAConfig):
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
     ("weight_decay", -0.1), ("max_grad_norm", 0.0), ("loss_type", "kto"), ("label_smoothing", 0.5),
     ("unknown_field", 1)],
)  # fmt: skip
def test_out_of_bounds_values_are_rejected(field, value):
    with pytest.raises(ValidationError):
        DPOHyperparameters(**{field: value})


def test_label_smoothing_is_for_the_sigmoid_loss_and_the_error_names_it():
    assert DPOHyperparameters(label_smoothing=0.1).label_smoothing == 0.1
    with pytest.raises(ValidationError) as info:
        DPOHyperparameters(loss_type="hinge", label_smoothing=0.1)
    assert info.value.errors()[0]["loc"] == ("label_smoothing",)


def test_job_config_is_discriminated_by_type():
    adapter = TypeAdapter(JobConfig)
    assert isinstance(adapter.validate_python({"type": "dpo", "base_model": "m"}), DPOJob)
    rm = adapter.validate_python({"type": "reward_model", "base_model": "m", "lora": {"r": 4}})
    assert isinstance(rm, RewardModelJob) and rm.lora == LoRAConfig(r=4)
    assert rm.hyperparameters.center_rewards_coefficient == 0.0


def test_job_forbids_extra_fields():
    with pytest.raises(ValidationError):
        DPOJob(base_model="builtin:tiny-llama", lr=1.0)
    job = DPOJob.model_validate({"base_model": "x", "hyperparameters": {"max_steps": 3}})
    assert job.type == "dpo" and job.hyperparameters.max_steps == 3 and job.seed == 0
