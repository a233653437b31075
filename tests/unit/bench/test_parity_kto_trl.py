"""Our KTO loss and metrics equal TRL's KTOTrainer on identical inputs (bench/parity_kto.py).

Skipped when TRL, a bench extra, is not installed: ``pip install -e '.[bench]'``.
"""

import pytest

pytest.importorskip("trl", reason="TRL is not installed (a bench extra: pip install -e '.[bench]')")
pytest.importorskip("datasets", reason="datasets is not installed (comes with TRL, a bench extra)")

from bench import parity_kto  # noqa: E402


@pytest.mark.parametrize("case", sorted(parity_kto.KTO_CASES))
def test_kto_loss_and_metrics_equal_trls(case):
    entry = parity_kto.kto_parity(case)
    assert entry["same_token_ids"], "TRL tokenised the rows (or built the mismatched pairs) differently"
    assert set(entry["compared"]) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                      "logps/chosen", "logps/rejected", "kl"}  # fmt: skip
    assert entry["max_abs_diff"] <= 1e-5, entry
    # one case clamps the reference point at 0, the other does not
    assert (entry["ours_metrics"]["kl"] == 0) == (case == "feedback_weighted")
