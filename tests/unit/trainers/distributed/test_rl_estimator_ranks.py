"""GRPO's RLOO and REINFORCE++ estimators (and GSPO's sequence ratio) on 2 gloo processes equal one process.

Every rank holds the whole rollout once it is gathered, so RLOO's leave-one-out baselines and
REINFORCE++'s standardisation over every token of the rollout are the same statistics on each
rank as in one process; the KL penalty in the reward comes from the frozen passes, each rank
computing its share of the rows. Each run is a real torchrun launch (~15–20 s on 2 cores). The
runs recompute π_old (two minibatches, two iterations), so the ratio, and GSPO's clip, matter.
"""

import pytest

from tests.unit.trainers.distributed.rank_runs import train_in_ranks
from tests.unit.trainers.distributed.test_rl_ranks import (
    DATA,
    GRPO,
    GRPO_ROLLOUT,
    GRPO_TRAIN,
    assert_close_metrics,
    assert_equal_metrics,
    assert_same_weights,
    job,
)

pytestmark = pytest.mark.trains

OPTIONS = {
    "rloo_gspo": {"advantage_estimator": "rloo", "importance_sampling_level": "sequence",
                  "loss_aggregation": "sequence"},
    "reinforce_pp": {"advantage_estimator": "reinforce_pp"},
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_estimator_on_two_processes_equals_one_process(name, tmp_path):
    spec = job("grpo", GRPO | OPTIONS[name])
    one = train_in_ranks(spec, DATA, tmp_path / "one", processes=1)
    two = train_in_ranks(spec, DATA, tmp_path / "two", processes=2)

    assert one["result"]["status"] == two["result"]["status"] == "completed"
    assert sorted(two["metrics"]) == sorted(one["metrics"]) == [1, 2, 3, 4]
    assert_equal_metrics(two, one, GRPO_ROLLOUT)  # the same completions, hence the same rewards
    assert_close_metrics(two, one, GRPO_TRAIN)
    assert_same_weights(tmp_path / "two" / "checkpoint-4", tmp_path / "one" / "checkpoint-4")
    assert one["metrics"][4]["objective/kl"] > 0 and one["metrics"][2]["policy/approx_kl"] > 0  # π moved
