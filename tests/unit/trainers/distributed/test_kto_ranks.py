"""A KTO job on 2 gloo processes equals one process: z_ref all-reduced over the step, losses, evaluation, weights.

Real torchrun launches (`train_in_ranks`); the batches leave a rank without rows somewhere, as in
test_preference_ranks: ``batch_size`` 3 in 2 micro-batches, evaluation examples in forwards of 2.
The preference rows are read as feedback rows (two examples each).
"""

import pytest

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from tests.unit.trainers.distributed.test_preference_ranks import (
    DATA,
    HYPERPARAMETERS,
    assert_same_metrics,
    assert_same_weights,
)

pytestmark = pytest.mark.trains

KTO_TRAIN = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
             "kl", "train/grad_norm")  # fmt: skip
KTO_EVAL = ("eval/loss", "eval/rewards/chosen", "eval/rewards/rejected", "eval/kl")


def test_kto_on_two_ddp_processes_equals_one_process(tmp_path):
    job = {"type": "kto", "base_model": "builtin:tiny-llama", "seed": 5, "strategy": "ddp",
           "hyperparameters": HYPERPARAMETERS | {"learning_rate": 3e-3}}  # fmt: skip
    one = train_in_ranks(job, DATA, tmp_path / "one", processes=1)
    two = train_in_ranks(job, DATA, tmp_path / "two", processes=2)

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):  # a step whose examples are all on one side reports the other side's metrics on neither
        assert set(two["metrics"][step]) == set(one["metrics"][step])
        present = [name for name in KTO_TRAIN if name in one["metrics"][step]]
        assert_same_metrics(two, one, [step], present)
    assert_same_metrics(two, one, [2, 4], KTO_EVAL)
    assert one["metrics"][4]["kl"] > 0 and one["metrics"][4]["eval/kl"] > 0  # the all-reduced estimate is tested
    assert_same_weights(tmp_path / "two" / "checkpoint-4", tmp_path / "one" / "checkpoint-4")
