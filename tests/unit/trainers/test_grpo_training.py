"""GRPO runs on builtin:tiny-llama: learning a grader's reward on CPU, resume, stop, the reference model, samples."""

import re

import pytest

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import GRPOJob, TrainingData
from trainers.data.prompts import PromptOrder, tokenize_prompts
from trainers.models.checkpoint import MODEL_DIR, read_model_info

pytestmark = pytest.mark.trains

PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
LOWERCASE = {"type": "string_check", "name": "lowercase", "operation": "regex", "reference": "[a-z]"}  # about half
# The learning settings (also the service's end-to-end GRPO job): 4 prompts × 8 completions of 8 tokens
# per rollout, one on-policy step each, β = 0.04 against a frozen copy of the base model.
LEARNING = {"learning_rate": 1e-2, "max_steps": 16, "rollout_batch_size": 4, "num_generations": 8,
            "batch_size": 32, "max_new_tokens": 8, "max_prompt_length": 16, "max_length": 64}  # fmt: skip
SMALL = {"learning_rate": 1e-2, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8, "max_new_tokens": 6,
         "max_prompt_length": 16, "max_length": 64}  # fmt: skip


def grpo_job(seed=0, reward=CONTAINS_E, lora=None, base=SMALL, **hp):
    return GRPOJob(base_model="builtin:tiny-llama", seed=seed, reward=reward, lora=lora, hyperparameters=base | hp)


def mean_reward(metrics, steps):
    return sum(metrics[s]["reward/mean"] for s in steps) / len(steps)


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_learns_to_write_the_rewarded_letter(seed):
    # An untrained tiny-llama is close to uniform over its 262 tokens: about 3% of its 8-token
    # completions contain an "e". Within 16 steps nearly all of them do.
    callbacks = RecordingCallbacks()
    result = trainers.run(grpo_job(seed, base=LEARNING), TrainingData(train=PROMPTS), callbacks)
    assert (result.status, result.step) == ("completed", 16)
    metrics = callbacks.metrics
    before, after = mean_reward(metrics, [1, 2, 3]), mean_reward(metrics, [14, 15, 16])
    assert before < 0.15 and after > 0.8, (before, after)
    assert metrics[1]["objective/kl"] == pytest.approx(0, abs=1e-6)  # the policy still is the reference
    assert metrics[16]["objective/kl"] > 0.1 and metrics[16]["policy/entropy"] < metrics[1]["policy/entropy"]
    expected = {"reward/mean", "reward/std", "reward/has_e", "frac_reward_zero_std", "objective/kl", "policy/clipfrac",
                "policy/entropy", "completions/mean_length", "completions/eos_fraction", "train/loss",
                "train/grad_norm", "train/learning_rate"}  # fmt: skip
    assert expected <= set(metrics[16])


def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    # Two minibatches × μ = 2 iterations: 4 optimizer steps per rollout, with π_old recomputed; the
    # stop comes between rollouts, the resumed run reloads the base model as its reference.
    job = grpo_job(3, reward=LOWERCASE, batch_size=4, num_iterations=2, max_steps=8, gradient_accumulation_steps=2,
                   warmup_steps=2, checkpoint_every=100)  # fmt: skip
    data = TrainingData(train=PROMPTS)
    straight = RecordingCallbacks()
    assert trainers.run(job, data, straight).step == 8

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=3)
    result = trainers.run(job, data, interrupted)
    assert (result.status, result.step) == ("stopped", 4)  # polled between rollouts
    saved, info = interrupted.checkpoints[4]
    assert info["model"]["kind"] == "causal_lm" and read_model_info(saved / MODEL_DIR)["kind"] == "causal_lm"

    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, data, resumed, resume_from=saved)
    assert (result.status, result.step) == ("completed", 8)
    assert sorted(resumed.metrics) == [5, 6, 7, 8]
    combined = interrupted.metrics | resumed.metrics
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"
    assert sorted(straight.samples) == [4, 8]  # one report per rollout, at its last step
    assert (interrupted.samples | resumed.samples) == straight.samples
    assert straight.metrics[1]["policy/approx_kl"] == 0 < straight.metrics[2]["policy/approx_kl"]  # π moved from π_old
    # A rollout's 4 steps read each of its 8 sequences (prompt + completion) twice.
    prompt_tokens = [len(p.ids) for p in tokenize_prompts(PROMPTS, tiny()[1], max_prompt_length=16)]
    order, total = PromptOrder(num_rows=len(PROMPTS), rollout_batch_size=2, seed=3), 0
    for rollout, end in ((1, 4), (2, 8)):
        prompts = 4 * sum(prompt_tokens[i] for i in order.rollout_indices(rollout))  # G = 4 completions each
        total += 2 * (prompts + 8 * straight.metrics[end]["completions/mean_length"])
        assert straight.metrics[end]["train/num_tokens"] == pytest.approx(total, abs=1e-3), end


def test_stop_before_any_step_saves_nothing_and_a_checkpoint_falls_due_at_the_rollout_end(tmp_path):
    stopped = RecordingCallbacks(stop_after=0)
    result = trainers.run(grpo_job(max_steps=4), TrainingData(train=PROMPTS), stopped)
    assert (result.status, result.step) == ("stopped", 0) and stopped.checkpoints == {}

    callbacks = RecordingCallbacks()
    job = grpo_job(batch_size=4, max_steps=5, checkpoint_every=3)  # 2 steps per rollout
    trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    assert sorted(callbacks.checkpoints) == [4, 5]  # step 3 was due: saved when its rollout ended


def test_beta_zero_loads_no_reference_model(monkeypatch):
    def no_reference(*args, **kwargs):
        raise AssertionError("a reference model was built")

    monkeypatch.setattr("trainers.run_setup.reference_policy", no_reference)
    callbacks = RecordingCallbacks()
    trainers.run(grpo_job(max_steps=1, beta=0.0), TrainingData(train=PROMPTS), callbacks)
    assert "objective/kl" not in callbacks.metrics[1] and "policy/entropy" in callbacks.metrics[1]


def test_lora_uses_the_policy_without_adapters_as_reference_and_reports_eval_rewards(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    job = grpo_job(reward=LOWERCASE, max_steps=4, lora={"r": 8, "dropout": 0.0}, learning_rate=3e-2, eval_every=2)
    data = TrainingData(train=PROMPTS, eval=PROMPTS[:3])
    trainers.run(job, data, callbacks)
    metrics = callbacks.metrics
    assert metrics[1]["objective/kl"] == 0  # fresh adapters change nothing
    assert metrics[4]["objective/kl"] > 0
    assert {"eval/reward/mean", "eval/reward/lowercase"} <= set(metrics[2]) and "eval/reward/mean" in metrics[4]
    directory, info = callbacks.checkpoints[4]
    assert info["model"]["adapter"] is True and (directory / MODEL_DIR / "adapter_config.json").is_file()
    # Each rollout (2 prompts × 4 completions, one step) shows 4 completions, one of each prompt first,
    # each with the reward the grader gave it.
    assert sorted(callbacks.samples) == [1, 2, 3, 4]
    for rows in callbacks.samples.values():
        assert len(rows) == 4 and rows[0]["prompt"] != rows[1]["prompt"] and rows[0]["prompt"] == rows[2]["prompt"]
        for row in rows:
            assert row["reward"] == row["reward/lowercase"] == float(re.search("[a-z]", row["completion"]) is not None)
            assert {"advantage", "length"} <= set(row)


def test_a_reward_without_spread_teaches_nothing():
    # Every completion contains the empty string: every group has std 0, every advantage is 0.
    callbacks = RecordingCallbacks()
    job = grpo_job(reward={**CONTAINS_E, "reference": ""}, max_steps=1, beta=0.0)
    trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    metrics = callbacks.metrics[1]
    assert metrics["reward/mean"] == 1 and metrics["reward/std"] == 0 and metrics["frac_reward_zero_std"] == 1
    assert metrics["train/loss"] == 0 and metrics["train/grad_norm"] == 0
