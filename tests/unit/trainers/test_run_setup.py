"""The set-up every trainer shares (`prepare_run`): model, data, reference and resume, on builtin:tiny-llama."""

import pytest
import torch
from peft import PeftModel

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers.data.preference import TokenizedPair
from trainers.data.prompts import TokenizedPrompt
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.loading import load_policy
from trainers.run_setup import micro_batch_size, prepare_run
from trainers.spec.config import DPOJob, GRPOJob, LoopHyperparameters, RewardModelJob
from trainers.spec.errors import UserError
from trainers.spec.results import TrainingData

BASE = "builtin:tiny-llama"
PAIRS = uppercase_preference_rows(6, seed=1)
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write"]]
HAS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_dpo_job_gets_its_policy_pairs_and_a_frozen_reference():
    job = DPOJob(base_model=BASE, hyperparameters={"batch_size": 8, "gradient_accumulation_steps": 2,
                                                   "precompute_ref_logprobs": False})  # fmt: skip
    callbacks = RecordingCallbacks()
    run = prepare_run(job, TrainingData(train=PAIRS, eval=PAIRS[:2]), callbacks, resume_from=None,
                      reference="during_training")  # fmt: skip

    assert run.state is None and not run.resumed
    assert run.device.type in ("cpu", "cuda") and next(run.model.parameters()).device.type == run.device.type
    assert run.model.training and all(p.requires_grad for p in run.model.parameters())
    assert len(run.train) == 6 and len(run.eval) == 2 and isinstance(run.train[0], TokenizedPair)
    assert run.micro_batch_size == 4
    assert run.model_info() == {"kind": "causal_lm", "adapter": False, "base_model": BASE}
    # π_ref: a frozen copy of the policy, not the policy itself.
    assert run.reference is not run.model and same_weights(run.reference, run.model)
    assert not run.reference.training and not any(p.requires_grad for p in run.reference.parameters())
    infos = [message for level, message in callbacks.events if message.startswith("loaded ")]
    assert len(infos) == 1 and infos[0].startswith(f"loaded {BASE} (") and "trained) on" in infos[0]


def test_a_reference_read_only_before_training_is_the_fresh_policy_itself():
    job = DPOJob(base_model=BASE)
    run = prepare_run(job, TrainingData(train=PAIRS), RecordingCallbacks(), resume_from=None,
                      reference="before_training")  # fmt: skip
    assert run.reference is run.model and run.eval == []


def test_a_grpo_job_gets_prompts_and_no_reference_with_beta_zero():
    job = GRPOJob(base_model=BASE, reward=HAS_E, hyperparameters={"beta": 0.0, "max_prompt_length": 2,
                                                                  "batch_size": 8})  # fmt: skip
    callbacks = RecordingCallbacks()
    run = prepare_run(job, TrainingData(train=PROMPTS), callbacks, resume_from=None)
    assert run.reference is None
    assert [type(p) for p in run.train] == [TokenizedPrompt] * 3 and run.train[0].item == PROMPTS[0]
    assert max(len(p.ids) for p in run.train) == 2  # cut to max_prompt_length, reported once
    assert [m for level, m in callbacks.events if level == "warning"] == [
        "3 of 3 train prompts were longer than max_prompt_length=2 tokens and keep only their last 2"
    ]
    assert run.micro_batch_size == 8


def test_the_same_seed_draws_the_same_lora_adapters_and_the_reference_is_the_policy():
    job = GRPOJob(base_model=BASE, reward=HAS_E, seed=3, lora={"r": 4})
    first, second = (prepare_run(job, TrainingData(train=PROMPTS), RecordingCallbacks(), resume_from=None,
                                 reference="during_training") for _ in range(2))  # fmt: skip
    assert isinstance(first.model, PeftModel) and first.reference is first.model
    assert same_weights(first.model, second.model)
    trainable = [n for n, p in first.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert first.model_info()["adapter"] is True


def test_a_reward_model_job_loads_a_score_head_and_announces_nothing_when_asked():
    job = RewardModelJob(base_model=BASE)
    callbacks = RecordingCallbacks()
    run = prepare_run(job, TrainingData(train=PAIRS), callbacks, resume_from=None, model="reward_model",
                      announce=False)  # fmt: skip
    assert run.model.config.num_labels == 1 and run.reference is None
    assert run.model_info() == {"kind": "reward_model", "adapter": False, "base_model": BASE}
    assert callbacks.events == []


def test_no_training_rows_is_a_user_error():
    with pytest.raises(UserError, match="the training data has no rows"):
        prepare_run(DPOJob(base_model=BASE), TrainingData(train=[]), RecordingCallbacks(), resume_from=None)


def test_micro_batch_size_is_the_batch_over_its_parts_and_at_least_one():
    assert micro_batch_size(LoopHyperparameters(batch_size=8, gradient_accumulation_steps=4)) == 2
    assert micro_batch_size(LoopHyperparameters(batch_size=4, gradient_accumulation_steps=4)) == 1


@pytest.mark.trains
def test_resuming_restores_the_step_the_checkpoint_model_and_reloads_the_base_as_reference(tmp_path):
    job = DPOJob(base_model=BASE, hyperparameters={"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2})
    saved = RecordingCallbacks(tmp_path)
    trainers.run(job, TrainingData(train=PAIRS), saved)
    directory = saved.checkpoints[2][0]

    callbacks = RecordingCallbacks()
    run = prepare_run(job, TrainingData(train=PAIRS), callbacks, resume_from=directory, reference="before_training")
    assert run.resumed and run.state["step"] == 2
    assert run.training_loop(steps_per_epoch=3).step == 2 and callbacks.total_steps == [2]
    assert ("info", "resumed from step 2") in callbacks.events
    base, _ = load_policy(BASE)
    assert not same_weights(run.model, base)  # the checkpoint's trained policy
    # The policy has moved: π_ref is the base model again, loaded and frozen.
    assert run.reference is not run.model and same_weights(run.reference, base)
    assert not run.reference.training and not any(p.requires_grad for p in run.reference.parameters())
