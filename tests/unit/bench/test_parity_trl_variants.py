"""GRPO's RLOO and GSPO options equal TRL's RLOOTrainer and GSPO on identical inputs (bench/parity_variants.py).

Skipped when TRL, a bench extra, is not installed: ``pip install -e '.[bench]'``.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed (a bench extra: pip install -e '.[bench]')")
pytest.importorskip("datasets", reason="datasets is not installed (comes with TRL, a bench extra)")

_PATH = Path(__file__).resolve().parents[3] / "bench" / "parity_variants.py"
_spec = importlib.util.spec_from_file_location("bench_parity_variants", _PATH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


@pytest.mark.parametrize("case", sorted(parity.RLOO_CASES))
def test_rloo_advantages_loss_and_gradient_equal_trls(case):
    entry = parity.rloo_parity(case)
    assert entry["nonzero"] > 0 and entry["trl_kl"] != 0, "the check needs advantages and a KL penalty"
    assert entry["max_abs_diff"] <= 1e-5, entry


@pytest.mark.parametrize("case", sorted(parity.GSPO_CASES))
def test_gspo_loss_and_gradient_equal_trls(case):
    entry = parity.gspo_parity(case)
    assert 0 < entry["clipfrac"] < 1, "the check needs completions on both sides of the clip"
    assert entry["max_abs_diff"] <= 1e-5, entry
