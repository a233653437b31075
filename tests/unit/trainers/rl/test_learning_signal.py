"""Runs that cannot learn, made visible: a grader erring on every completion fails the run after 3 rollouts,
and rollouts in which every group got the same reward warn once per streak of 5."""

import pytest
import torch

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import GRPOJob, TrainingData
from trainers.rl.learning_signal import LearningSignal
from trainers.rl.rewards import RewardScores
from trainers.spec.errors import UserError
from trainers.spec.rewards import reward_spec_adapter

PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go"]]
HAS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
FINAL = {"type": "string_check", "name": "final", "operation": "contains", "reference": "{{item.final}}"}
ALWAYS = {"type": "string_check", "name": "always", "operation": "eq", "input": "{{item.prompt}}",
          "reference": "{{item.prompt}}"}
SMALL = {"learning_rate": 1e-2, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8, "max_new_tokens": 4,
         "max_prompt_length": 16, "max_length": 64}  # fmt: skip
NO_SIGNAL = "no learning signal: every group got the same reward"


def grpo_job(reward, **hp) -> GRPOJob:
    return GRPOJob(base_model="builtin:tiny-llama", seed=0, reward=reward, hyperparameters=SMALL | hp)


def scores(errors: list[str], n: int = 4) -> RewardScores:
    return RewardScores(rewards=torch.zeros(n), per_grader={}, errors=errors,
                        rows_with_errors=len({e.split(": ")[0] for e in errors}))  # fmt: skip


def warnings(callbacks) -> list[str]:
    return [m for level, m in callbacks.events if level == "warning" and m.startswith(NO_SIGNAL)]


@pytest.mark.trains
def test_a_grader_erring_on_every_completion_fails_the_run_after_three_rollouts():
    callbacks = RecordingCallbacks()
    reward = {"type": "multi", "name": "total", "graders": [HAS_E, FINAL]}
    with pytest.raises(UserError) as raised:
        trainers.run(grpo_job(reward, max_steps=8), TrainingData(train=PROMPTS), callbacks)
    assert raised.value.param == "reward.graders[1]"
    assert raised.value.message == (
        "reward.graders[1]: grader 'final' could not grade any completion in 3 consecutive rollouts; its first "
        "error: {{item.final}}: the prompt row has no field item.final")
    assert sorted(callbacks.metrics) == [1, 2]  # one step per rollout: the third rollout was never trained on


@pytest.mark.trains
def test_a_constant_reward_warns_once_per_streak():
    callbacks = RecordingCallbacks()
    result = trainers.run(grpo_job(ALWAYS, max_steps=8), TrainingData(train=PROMPTS), callbacks)
    assert result.step == 8
    assert all(m["frac_reward_zero_std"] == 1.0 for m in callbacks.metrics.values())
    assert len(warnings(callbacks)) == 1  # at the 5th rollout, not again at the 6th to 8th


def test_a_streak_is_broken_by_one_rollout_with_signal_or_one_graded_completion():
    events = []
    signal = LearningSignal(reward_spec_adapter.validate_python(ALWAYS), lambda level, m: events.append((level, m)))
    for frac in [1.0] * 5 + [0.5] + [1.0] * 9:
        signal.observe(scores([]), frac)
    assert [m[: len(NO_SIGNAL)] for _, m in events] == [NO_SIGNAL, NO_SIGNAL]  # rollouts 5 and 11
    every = [f"completion {i}: always: boom {i}" for i in range(4)]
    for _ in range(2):
        signal.observe(scores(every))
    signal.observe(scores(every[1:]))  # completion 0 was graded: the streak starts again
    signal.observe(scores(every))
    signal.observe(scores(every))
    with pytest.raises(UserError, match=r"^reward: grader 'always' .* its first error: boom 0$") as raised:
        signal.observe(scores(every))
    assert raised.value.param == "reward"


def test_each_grader_has_its_own_streak_counted_over_every_ranks_completions():
    # After `gather_rollout` every rank holds the whole rollout's errors: 2 ranks × 2 completions each.
    reward = reward_spec_adapter.validate_python({"type": "multi", "name": "m", "graders": [HAS_E, FINAL]})
    rank_parts = [[f"completion {i}: final: missing" for i in range(2)] for _ in range(2)]
    signal = LearningSignal(reward, lambda *_: None)
    for _ in range(2):
        signal.observe(scores([e for part in rank_parts for e in part]))
    with pytest.raises(UserError):
        signal.observe(scores([e for part in rank_parts for e in part]))
    assert signal.error_streaks == {"has_e": 0, "final": 3}
