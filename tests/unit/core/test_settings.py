"""Settings read from the environment: names, defaults and bounds."""

import pytest
from pydantic import ValidationError

from core.settings import Settings


@pytest.fixture
def env(monkeypatch):
    for name in Settings.model_fields:  # only what a test sets is read
        monkeypatch.delenv(name.upper(), raising=False)

    def read(**variables: str) -> Settings:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return Settings(_env_file=None)

    return read


def test_defaults(env):
    s = env()
    assert (s.heartbeat_seconds, s.lease_seconds, s.db_outage_grace_seconds, s.unsent_grace_seconds) == (
        5.0, 60.0, 300.0, 10.0)
    assert (s.max_upload_bytes, s.max_row_bytes, s.model_ops_cache_bytes, s.torch_threads) == (
        2 * 1024**3, 8 * 1024**2, 2 * 1024**3, 0)
    assert (s.max_attempts, s.db_pool_size, s.max_json_depth, s.reward_function_modules) == (3, 5, 32, [])


def test_environment_values_are_parsed(env):
    s = env(STREAM_POLL_SECONDS="0.25", UNSENT_GRACE_SECONDS="0", MAX_DATASET_ROWS="7", TORCH_THREADS="0",
            REWARD_FUNCTION_MODULES='["team.rewards"]')
    assert (s.stream_poll_seconds, s.unsent_grace_seconds, s.max_dataset_rows, s.torch_threads) == (0.25, 0.0, 7, 0)
    assert s.reward_function_modules == ["team.rewards"]


@pytest.mark.parametrize(("name", "value", "error"), [
    ("HEARTBEAT_SECONDS", "0", "greater_than"),  # a duration is never zero
    ("MODEL_OPS_TIMEOUT_SECONDS", "-1", "greater_than"),
    ("DB_OUTAGE_GRACE_SECONDS", "-0.5", "greater_than_equal"),  # a grace period may be zero, not less
    ("MAX_ROW_BYTES", "0", "greater_than"),
    ("MODEL_OPS_CACHE_BYTES", "-1", "greater_than_equal"),
    ("MAX_ATTEMPTS", "101", "less_than_equal"),
    ("LEASE_SECONDS", "soon", "float_parsing"),
])
def test_values_out_of_bounds_are_refused(env, name, value, error):
    with pytest.raises(ValidationError) as refused:
        env(**{name: value})
    assert [(e["type"], e["loc"]) for e in refused.value.errors()] == [(error, (name.lower(),))]
