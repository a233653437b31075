"""SFT on 2 gloo processes equals one process: losses, token counts, evaluation and weights.

``batch_size`` 5 in 2 micro-batches is 3 + 2 rows, each shared between the ranks, so a rank's rows
hold a different number of trained tokens than the other's: the loss is right only when every rank
divides by the step's global count. The packed run checks packing under ranks too.
"""

import pytest

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from tests.unit.trainers.distributed.test_preference_ranks import assert_same_metrics, assert_same_weights
from tests.unit.trainers.test_sft import ROWS

pytestmark = pytest.mark.trains

NAMES = ("train/loss", "train/mean_token_accuracy", "train/num_tokens", "train/grad_norm", "eval/loss",
         "eval/mean_token_accuracy")  # fmt: skip


JOB = {"type": "sft", "base_model": "builtin:tiny-llama", "seed": 2, "strategy": "ddp",
       "hyperparameters": {"learning_rate": 3e-3, "max_steps": 3, "batch_size": 5, "gradient_accumulation_steps": 2,
                           "eval_every": 3, "packing": True}}  # fmt: skip


def test_two_processes_train_as_one(tmp_path):
    data = {"train": ROWS[:11], "eval": ROWS[11:]}
    one = train_in_ranks(JOB, data, tmp_path / "one", processes=1)
    two = train_in_ranks(JOB, data, tmp_path / "two", processes=2)
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3]
    assert_same_metrics(two, one, [1, 2, 3], NAMES[:4])
    assert_same_metrics(two, one, [3], NAMES[4:])
    assert_same_weights(tmp_path / "two" / "checkpoint-3", tmp_path / "one" / "checkpoint-3")
