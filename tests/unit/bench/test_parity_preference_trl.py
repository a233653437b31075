"""Our SimPO and ORPO losses equal TRL's CPOTrainer(loss_type="simpo") and ORPOTrainer on identical inputs.

bench/parity_preference.py; skipped when TRL, a bench extra, is not installed: ``pip install -e '.[bench]'``.
"""

import pytest

pytest.importorskip("trl", reason="TRL is not installed (a bench extra: pip install -e '.[bench]')")
pytest.importorskip("datasets", reason="datasets is not installed (comes with TRL, a bench extra)")

from bench import parity_preference  # noqa: E402


@pytest.mark.parametrize("case", sorted(parity_preference.SIMPO_CASES))
def test_simpo_loss_and_metrics_equal_trls_cpo_simpo(case):
    entry = parity_preference.simpo_parity(case)
    assert entry["same_token_ids"], "TRL tokenised the rows differently"
    assert set(entry["compared"]) >= {"loss", "rewards/margins", "logps/chosen"}
    assert entry["max_abs_diff"] <= 1e-5, entry


def test_orpo_odds_ratio_term_and_metrics_equal_trls():
    entry = parity_preference.orpo_parity()
    assert entry["same_token_ids"], "TRL tokenised the rows differently"
    assert set(entry["compared"]) >= {"or_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "trl_nll_loss"}
    assert entry["max_abs_diff"] <= 1e-5, entry
    ours = entry["ours_metrics"]
    # The SFT terms differ by definition (ours: per-response mean; TRL's: prompt too, batch token mean).
    assert ours["loss"] == pytest.approx(ours["nll_loss"] + ours["or_loss"])
    assert ours["nll_loss"] == pytest.approx(-ours["logps/chosen"])
