"""Authentication of repeated requests: a known key costs no database query, a revoked one is refused."""

from collections.abc import Iterator

import pytest
from sqlalchemy import event, update

import core.projects
from core.db import engine_for, session_scope
from core.models import ApiKey
from core.projects import hash_key


@pytest.fixture
def statements(settings) -> Iterator[list[str]]:
    """The SQL statements this process sends to the deployment's database while the test runs."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    engine = engine_for(settings.database_url)
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The authentication cache's clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(core.projects, "_clock", lambda: now[0])
    return now


def auth_queries(statements: list[str]) -> list[str]:
    return [s for s in statements if "api_keys" in s or "FROM projects" in s]


def test_a_known_key_is_checked_against_the_database_once_per_cache_period(client, statements, clock):
    assert client.get("/v1/jobs").status_code == 200
    assert len(auth_queries(statements)) == 1  # key and project in one round trip
    statements.clear()
    for _ in range(3):
        assert client.get("/v1/jobs").status_code == 200
    assert auth_queries(statements) == []
    clock[0] += core.projects.AUTH_CACHE_SECONDS + 0.1
    assert client.get("/v1/jobs").status_code == 200
    assert len(auth_queries(statements)) == 1


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_period_ends(client, settings, project_key, clock):
    assert client.get("/v1/jobs").status_code == 200
    with session_scope(settings.database_url) as session:  # as another API process or the CLI would
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(project_key))
                        .values(revoked_at=ApiKey.created_at))
    clock[0] += core.projects.AUTH_CACHE_SECONDS + 0.1
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_unknown_keys_are_never_cached(client, statements, clock):
    for _ in range(2):
        r = client.get("/v1/jobs", headers={"Authorization": "Bearer rlhf_unknown"})
        assert r.status_code == 401
    assert len(auth_queries(statements)) == 2
