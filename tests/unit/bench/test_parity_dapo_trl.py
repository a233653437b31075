"""Our DAPO overlong shaping equals TRL's soft overlong punishment on sampled completions (bench/parity_dapo.py).

Skipped when TRL, a bench extra, is not installed: ``pip install -e '.[bench]'``.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed (a bench extra: pip install -e '.[bench]')")

_PATH = Path(__file__).resolve().parents[3] / "bench" / "parity_dapo.py"
_spec = importlib.util.spec_from_file_location("bench_parity_dapo", _PATH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def test_overlong_penalty_equals_trls():
    entry = parity.overlong_parity()
    assert entry["in_buffer"] > 0 and entry["before_buffer"] > 0, "the check needs completions on both sides"
    assert entry["max_abs_diff"] <= 1e-5, entry
