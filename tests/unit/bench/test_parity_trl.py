"""Our DPO losses, reward-model loss and GRPO advantages, loss and gradient equal TRL's on identical inputs
(bench/parity.py).

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
def test_grpo_advantages_loss_and_gradient_equal_trls(case):
    entry = parity.grpo_parity(case)
    assert entry["nonzero_advantages"] > 0, "the check needs rewards that differ within groups"
    # The old and reference models are perturbed: ratios off 1, a KL above 0, some tokens clipped,
    # on TRL's side and on ours (a copy that ran the policy's weights would make all three vanish).
    assert entry["max_abs_log_ratio"] > 1e-3, entry
    assert entry["trl_kl"] > 1e-6 and entry["ours_kl"] > 1e-6, entry
    assert entry["trl_clipped"] > 0 and entry["ours_clipfrac"] > 0, entry
    assert entry["max_abs_diff"] <= 1e-5, entry
