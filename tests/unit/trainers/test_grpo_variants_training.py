"""GRPO's variants learn on builtin:tiny-llama: RLOO, REINFORCE++ and GSPO raise a grader's reward on CPU.

The setting is GRPO's learning test (tests/unit/trainers/test_grpo_training.py): an untrained
tiny-llama writes an "e" in about 3% of its 8-token completions, and the reward is 1 for those.
"""

import pytest

import trainers
from tests.unit.trainers.test_grpo_training import CONTAINS_E, LEARNING, PROMPTS, grpo_job, mean_reward
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import TrainingData

pytestmark = pytest.mark.trains

VARIANTS = {
    "rloo": {"advantage_estimator": "rloo"},
    "reinforce_pp": {"advantage_estimator": "reinforce_pp"},
    # μ = 2 passes over each rollout, so the sequence ratio moves off 1 and its clip acts; 16 rollouts.
    "gspo": {"importance_sampling_level": "sequence", "loss_aggregation": "sequence", "num_iterations": 2,
             "max_steps": 32},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_variant_learns_to_write_the_rewarded_letter(variant):
    callbacks = RecordingCallbacks()
    job = grpo_job(0, reward=CONTAINS_E, base=LEARNING, **VARIANTS[variant])
    result = trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    steps = job.hyperparameters.max_steps
    assert (result.status, result.step) == ("completed", steps)
    metrics = callbacks.metrics
    before, after = mean_reward(metrics, [1, 2, 3]), mean_reward(metrics, [steps - 2, steps - 1, steps])
    assert before < 0.15 and after > before + 0.5, (before, after)
    expected = {"reward/mean", "frac_reward_zero_std", "objective/kl", "policy/clipfrac", "train/loss"}
    assert expected <= set(metrics[steps])
    if variant == "gspo":
        assert max(m["policy/clipfrac"] for m in metrics.values()) > 0.1  # whole completions were clipped
