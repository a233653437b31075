"""An ORPO job (reference-free, with its own metrics) on 2 gloo processes equals one process.

Real torchrun launches (`train_in_ranks`); the batches leave a rank without rows somewhere, as in
test_preference_ranks: ``batch_size`` 3 in 2 micro-batches, 5 evaluation pairs in forwards of 2.
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

ORPO_TRAIN = ("train/loss", "train/nll_loss", "train/log_odds_ratio", "train/log_odds_chosen", "rewards/accuracies",
              "rewards/margins", "logps/rejected", "train/grad_norm")  # fmt: skip
ORPO_EVAL = ("eval/loss", "eval/nll_loss", "eval/log_odds_ratio", "eval/rewards/margins")


def test_orpo_on_two_ddp_processes_equals_one_process(tmp_path):
    job = {"type": "orpo", "base_model": "builtin:tiny-llama", "seed": 5, "strategy": "ddp",
           "hyperparameters": HYPERPARAMETERS | {"learning_rate": 3e-3}}  # fmt: skip
    one = train_in_ranks(job, DATA, tmp_path / "one", processes=1)
    two = train_in_ranks(job, DATA, tmp_path / "two", processes=2)

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_same_metrics(two, one, [1, 2, 3, 4], ORPO_TRAIN)
    assert_same_metrics(two, one, [2, 4], ORPO_EVAL)
    assert_same_weights(tmp_path / "two" / "checkpoint-4", tmp_path / "one" / "checkpoint-4")
    assert one["metrics"][4]["train/loss"] < one["metrics"][1]["train/loss"]  # it trained
    assert not any("reference" in message for _, message in one["events"] + two["events"])
