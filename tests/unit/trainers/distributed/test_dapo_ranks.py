"""GRPO with DAPO's dynamic sampling and overlong shaping on 2 gloo processes equals one process.

Every rank holds each round's whole rewards after the gather, so every rank keeps the same groups
and draws the same next prompts; the kept groups, their rewards and the weights match one process's.
"""

import pytest

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from tests.unit.trainers.distributed.test_rl_ranks import DATA, assert_same_weights, job

pytestmark = pytest.mark.trains

TOLERANCE = 1e-4  # AdamW's first steps move a weight by about the learning rate whatever its gradient's size, so
# rounding noise in a near-zero gradient shows at learning_rate × noise: 3e-3 keeps it under the tolerance.
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}  # rare: rounds
DAPO = {"learning_rate": 3e-3, "max_steps": 3, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8,
        "beta": 0.04, "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64, "checkpoint_every": 3,
        "dynamic_sampling": True, "max_sampling_rounds": 3, "overlong_buffer": 2}  # fmt: skip
EXACT = ("reward/mean", "reward/has_e", "reward/overlong_penalty", "completions/mean_length", "sampling/rounds",
         "sampling/groups_dropped", "sampling/groups_trained", "sampling/reward_mean")  # fmt: skip
CLOSE = ("train/loss", "policy/entropy", "objective/kl", "train/grad_norm")


def test_dynamic_sampling_on_two_ddp_processes_equals_one_process(tmp_path):
    spec = job("grpo", DAPO) | {"reward": CONTAINS_E}
    one = train_in_ranks(spec, DATA, tmp_path / "one", processes=1)
    two = train_in_ranks(spec, DATA, tmp_path / "two", processes=2)

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(one["metrics"]) == sorted(two["metrics"]) == [1, 2, 3]
    assert max(m["sampling/rounds"] for m in one["metrics"].values()) > 1  # the refill ran
    for step in [1, 2, 3]:
        assert {n: two["metrics"][step][n] for n in EXACT} == {n: one["metrics"][step][n] for n in EXACT}, step
        for name in CLOSE:
            assert two["metrics"][step][name] == pytest.approx(one["metrics"][step][name], rel=TOLERANCE, abs=1e-6)
    assert_same_weights(tmp_path / "two" / "checkpoint-3", tmp_path / "one" / "checkpoint-3")
