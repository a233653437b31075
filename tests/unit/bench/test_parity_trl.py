"""Our DPO losses, reward-model loss and GRPO advantages and loss equal TRL's on identical inputs (bench/parity.py).

Skipped when TRL, a bench extra, is not installed: ``pip install -e '.[bench]'``.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed (a bench extra: pip install -e '.[bench]')")
pytest.importorskip("datasets", reason="datasets is not installed (comes with TRL, a bench extra)")

_PATH = Path(__file__).resolve().parents[3] / "bench" / "parity.py"
_spec = importlib.util.spec_from_file_location("bench_parity", _PATH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


@pytest.mark.parametrize("case", sorted(parity.DPO_CASES))
def test_dpo_loss_equals_trls(case):
    entry = parity.dpo_parity(case)
    assert entry["same_token_ids"], "TRL tokenised the rows differently"
    assert entry["max_abs_diff"] <= 1e-5, entry


def test_reward_model_loss_equals_trls():
    entry = parity.reward_parity()
    assert entry["same_token_ids"], "TRL tokenised the rows differently"
    assert entry["max_abs_diff"] <= 1e-5, entry


@pytest.mark.parametrize("case", sorted(parity.GRPO_CASES))
def test_grpo_advantages_and_loss_equal_trls(case):
    entry = parity.grpo_parity(case)
    assert entry["nonzero_advantages"] > 0, "the check needs rewards that differ within groups"
    assert entry["max_abs_diff"] <= 1e-5, entry
