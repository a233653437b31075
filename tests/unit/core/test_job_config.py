"""core.job_config: a job row becomes the trainers' job model, with what the worker resolved."""

import pytest
from pydantic import ValidationError

from core.job_config import job_config
from core.models import Job
from tests.unit.test_boundaries import imported_after
from trainers.spec.config import JOB_MODELS_BY_TYPE, JOB_TYPES, GRPOJob, PPOJob, RewardModelJob
from trainers.spec.rewards import ModelReward

REWARD = {"type": "string_check", "name": "answer", "operation": "contains", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "weight": 1.0}


def row(**fields) -> Job:
    return Job(**{"type": "dpo", "base_model": "builtin:tiny-llama", "seed": 0, "hyperparameters": {},
                  "lora": None, "reward": None} | fields)


def test_a_reward_model_job_keeps_every_stored_value():
    config = job_config(row(type="reward_model", seed=2**32 - 1, lora={"r": 4, "alpha": 8.0},
                            hyperparameters={"learning_rate": 3e-4, "center_rewards_coefficient": 0.01}))
    assert isinstance(config, RewardModelJob)
    assert config.base_model == "builtin:tiny-llama" and config.seed == 2**32 - 1
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (4, 8.0, 0.05)
    assert config.hyperparameters.learning_rate == 3e-4
    assert config.hyperparameters.center_rewards_coefficient == 0.01
    assert config.hyperparameters.reward_stats_rows == 2048  # a default the row did not store


def test_the_worker_passes_where_the_models_are():
    job = row(type="grpo", base_model="checkpoint:ckpt_a", hyperparameters={"batch_size": 8}, reward=REWARD)
    config = job_config(job, base_model="/models/ckpt_a", reward_model_dirs={"ckpt_b": "/models/ckpt_b"},
                        reward_function_modules=["team.rewards"])
    assert isinstance(config, GRPOJob)
    assert config.base_model == "/models/ckpt_a"
    assert config.reward_model_dirs == {"ckpt_b": "/models/ckpt_b"}
    assert config.reward_function_modules == ["team.rewards"]
    assert config.reward.model_dump() == REWARD
    assert (config.hyperparameters.batch_size, config.hyperparameters.num_generations) == (8, 8)
    # Without them (the API's check), the job's own reference and no reward models.
    config = job_config(job)
    assert config.base_model == "checkpoint:ckpt_a" and config.reward_model_dirs == {}
    assert config.reward_function_modules == []


def test_a_job_without_a_reward_takes_no_reward_fields():
    config = job_config(row(), reward_model_dirs={"ckpt_b": "/m"}, reward_function_modules=["m"])
    assert "reward_model_dirs" not in type(config).model_fields and config.type == "dpo"


def test_the_trainers_cross_field_rules_run_and_name_the_field():
    job = row(type="ppo", hyperparameters={"value_model": "reward_model"}, reward=REWARD)
    with pytest.raises(ValidationError) as info:
        job_config(job)
    (error,) = info.value.errors()
    assert error["loc"] == ("ppo", "reward")
    model_reward = ModelReward(type="model", name="rm", checkpoint_id="ckpt_rm").model_dump()
    config = job_config(row(type="ppo", hyperparameters={"value_model": "reward_model"}, reward=model_reward),
                        reward_model_dirs={"ckpt_rm": "/m"})
    assert isinstance(config, PPOJob) and config.hyperparameters.value_model == "reward_model"


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_every_job_type_converts_to_its_own_model(job_type):
    model = JOB_MODELS_BY_TYPE[job_type]
    config = job_config(row(type=job_type, reward=REWARD if "reward" in model.model_fields else None))
    assert type(config) is model and config.type == job_type
    assert config.hyperparameters == model.model_fields["hyperparameters"].annotation()


def test_the_conversion_imports_neither_torch_nor_the_api_nor_the_worker():
    assert not {"torch", "transformers", "api", "worker", "fastapi"} & imported_after("core.job_config")
