from typing import get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from trainers.spec.config import (
    JOB_MODELS,
    JOB_MODELS_BY_TYPE,
    JOB_TYPES,
    DPOHyperparameters,
    DPOJob,
    GRPOHyperparameters,
    GRPOJob,
    JobConfig,
    JobType,
    KTOJob,
    LoRAConfig,
    ORPOJob,
    PPOHyperparameters,
    PPOJob,
    RewardModelHyperparameters,
    RewardModelJob,
    RLHyperparameters,
    SFTJob,
)
from trainers.spec.hyperparameters import check_whole_minibatches

CONTAINS_A = {"type": "string_check", "name": "has_a", "operation": "contains", "reference": "a"}


def test_defaults_follow_the_dpo_paper():
    hp = DPOHyperparameters()
    assert hp.learning_rate == 1e-6 and hp.beta == 0.1 and hp.loss_type == "sigmoid"
    assert hp.max_prompt_length < hp.max_length
    assert DPOJob(base_model="builtin:tiny-llama").hyperparameters == hp


def test_every_field_is_documented():
    for model in (DPOHyperparameters, DPOJob, RewardModelHyperparameters, RewardModelJob, LoRAConfig,
                  RLHyperparameters, GRPOHyperparameters, GRPOJob, PPOHyperparameters, PPOJob):
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


def test_a_default_prompt_length_that_does_not_fit_is_still_refused():
    with pytest.raises(ValidationError) as info:
        DPOHyperparameters(max_length=100)  # max_prompt_length keeps its default, 256
    assert info.value.errors()[0]["loc"] == ("max_prompt_length",)


def test_grpo_defaults_follow_the_papers_and_make_one_on_policy_step_per_rollout():
    hp = GRPOHyperparameters()
    assert (hp.num_generations, hp.beta, hp.epsilon_low, hp.epsilon_high) == (8, 0.04, 0.2, 0.2)
    assert hp.scale_rewards and hp.loss_aggregation == "token" and hp.num_iterations == 1
    assert hp.learning_rate == 1e-6 and hp.temperature == 1.0 and hp.top_p == 1.0
    assert hp.completions_per_rollout == 64 and hp.num_minibatches == 1
    assert GRPOHyperparameters(batch_size=16, num_iterations=2).num_minibatches == 4


def test_ppo_defaults_follow_the_papers():
    hp = PPOHyperparameters()
    assert (hp.gamma, hp.lam, hp.cliprange, hp.cliprange_value, hp.vf_coef, hp.ppo_epochs) == (1.0, 0.95, 0.2, 0.2,
                                                                                                0.1, 4)  # fmt: skip
    assert hp.whiten_advantages and not hp.adaptive_kl and (hp.target_kl, hp.kl_horizon) == (6.0, 10_000)
    assert hp.entropy_coef == 0.0 and hp.ptx_coef == 0.0 and hp.reward_clip is None and hp.value_model == "policy"
    assert hp.completions_per_rollout == 32 and hp.num_minibatches == 4


@pytest.mark.parametrize(
    "model, values, field",
    [(GRPOHyperparameters, {"batch_size": 48}, "num_generations"),
     (GRPOHyperparameters, {"rollout_batch_size": 3, "num_generations": 2, "batch_size": 4}, "num_generations"),
     (GRPOHyperparameters, {"num_generations": 1}, "num_generations"),
     (GRPOHyperparameters, {"temperature": 0.0}, "temperature"),
     (GRPOHyperparameters, {"loss_aggregation": "mean"}, "loss_aggregation"),
     (GRPOHyperparameters, {"max_length": 300}, "max_new_tokens"),
     (GRPOHyperparameters, {"num_iterations": 0}, "num_iterations"),
     (PPOHyperparameters, {"batch_size": 5}, "rollout_batch_size"),
     (PPOHyperparameters, {"value_model": "critic"}, "value_model"),
     (PPOHyperparameters, {"top_p": 0.0}, "top_p")],
)  # fmt: skip
def test_rl_hyperparameter_errors_name_their_field(model, values, field):
    with pytest.raises(ValidationError) as info:
        model(**values)
    assert info.value.errors()[0]["loc"] == (field,)


def test_online_rl_jobs_need_a_reward_and_are_discriminated_by_type():
    adapter = TypeAdapter(JobConfig)
    job = adapter.validate_python({"type": "grpo", "base_model": "m", "reward": CONTAINS_A})
    assert isinstance(job, GRPOJob) and job.reward.name == "has_a" and job.reward_model_dirs == {}
    ppo = adapter.validate_python({"type": "ppo", "base_model": "m", "reward": CONTAINS_A,
                                   "reward_model_dirs": {"ckpt": "/models/rm"}})  # fmt: skip
    assert isinstance(ppo, PPOJob) and ppo.reward_model_dirs == {"ckpt": "/models/rm"}
    with pytest.raises(ValidationError) as info:
        adapter.validate_python({"type": "grpo", "base_model": "m"})
    assert info.value.errors()[0]["loc"] == ("grpo", "reward")
    with pytest.raises(ValidationError) as info:
        GRPOJob(base_model="m", reward={**CONTAINS_A, "operation": "startswith"})
    assert info.value.errors()[0]["loc"][:2] == ("reward", "string_check")


def test_a_critic_started_from_the_reward_model_needs_a_model_reward():
    with pytest.raises(ValidationError) as info:
        PPOJob(base_model="m", reward=CONTAINS_A, hyperparameters={"value_model": "reward_model"})
    (error,) = info.value.errors()
    assert error["loc"] == ("reward",) and "value_model" in error["msg"]
    model_reward = {"type": "multi", "name": "r", "graders": [CONTAINS_A, {"type": "model", "checkpoint_id": "c"}]}
    job = PPOJob(base_model="m", reward=model_reward, hyperparameters={"value_model": "reward_model"})
    assert job.hyperparameters.value_model == "reward_model"


def test_rl_jobs_round_trip_through_json():
    job = GRPOJob(base_model="m", reward=CONTAINS_A, hyperparameters={"num_iterations": 2, "epsilon_high": 0.28})
    again = TypeAdapter(JobConfig).validate_python(job.model_dump(mode="json"))
    assert again == job


def test_job_types_and_what_each_reads_come_from_the_one_union():
    assert JOB_MODELS == (DPOJob, ORPOJob, RewardModelJob, GRPOJob, PPOJob, SFTJob, KTOJob)
    assert JOB_TYPES == ("dpo", "orpo", "reward_model", "grpo", "ppo", "sft", "kto")
    assert get_args(JobType) == JOB_TYPES
    assert JOB_MODELS_BY_TYPE == {"dpo": DPOJob, "orpo": ORPOJob, "reward_model": RewardModelJob, "grpo": GRPOJob,
                                  "ppo": PPOJob, "sft": SFTJob, "kto": KTOJob}
    assert [m.dataset_kind for m in JOB_MODELS] == ["preference", "preference", "preference", "prompt", "prompt",
                                                    "chat", "feedback"]
    assert [m.also_reads for m in JOB_MODELS] == [(), (), (), (), (), (), ("preference",)]
    assert [sorted(m.service_fields) for m in JOB_MODELS] == [
        [], [], [], ["reward_function_modules", "reward_model_dirs"], ["reward_function_modules", "reward_model_dirs"],
        [], []]


def test_seeds_are_32_bit_unsigned():
    assert DPOJob(base_model="m", seed=2**32 - 1).seed == 2**32 - 1
    for seed in (2**32, -1):
        with pytest.raises(ValidationError) as info:
            DPOJob(base_model="m", seed=seed)
        assert info.value.errors()[0]["loc"] == ("seed",)


def test_whole_minibatches_message_names_the_rollout_and_the_batch():
    check_whole_minibatches(64, 16, "x")
    check_whole_minibatches(5, None, "x")  # batch_size failed its own check: nothing more to say
    with pytest.raises(ValueError, match=r"^rollout_batch_size \(6\) must split into whole minibatches of "
                                         r"batch_size \(4\)$"):
        check_whole_minibatches(6, 4, "rollout_batch_size (6)")
    with pytest.raises(ValidationError, match=r"rollout_batch_size \(3\) × num_generations \(2\) = 6 completions "
                                              r"must split into whole minibatches of batch_size \(4\)"):
        GRPOHyperparameters(rollout_batch_size=3, num_generations=2, batch_size=4)


def test_sft_defaults_follow_trl_and_train_on_assistant_tokens():
    job = TypeAdapter(JobConfig).validate_python({"type": "sft", "base_model": "builtin:tiny-llama"})
    assert isinstance(job, SFTJob) and job.dataset_kind == "chat"
    hp = job.hyperparameters
    assert (hp.learning_rate, hp.n_epochs, hp.batch_size, hp.max_length) == (2e-5, 3, 8, 1024)
    assert hp.assistant_only_loss is True and hp.packing is False and hp.max_prompt_length is None
    # Any max_length is fine: SFT has no prompt limit to stay under.
    assert SFTJob(base_model="m", hyperparameters={"max_length": 16}).hyperparameters.max_length == 16


def test_sft_refuses_a_prompt_limit_it_would_not_apply():
    with pytest.raises(ValidationError) as info:
        SFTJob(base_model="m", hyperparameters={"max_prompt_length": 64})
    error = info.value.errors()[0]
    assert error["loc"] == ("hyperparameters", "max_prompt_length") and "does not apply to SFT" in error["msg"]
