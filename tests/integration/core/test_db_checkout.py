"""Checking out a pooled Postgres connection: no round trip for a live one, a fresh one for a dead one."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url

from api.main import create_app
from core.db import configure_pool, engine_for
from tests.support import new_project_key, pg_admin


@pytest.fixture
def pg_client(postgres_settings_factory):
    settings = postgres_settings_factory()
    key = new_project_key(settings)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, settings


def test_a_live_pooled_connection_is_used_without_a_ping(pg_client, monkeypatch):
    client, settings = pg_client
    dialect = engine_for(settings.database_url).dialect
    pings = []
    real_ping = dialect.do_ping
    monkeypatch.setattr(dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    for _ in range(3):
        assert client.get("/v1/jobs").status_code == 200
    assert pings == []


def test_connections_the_server_ended_are_replaced_on_checkout(pg_client):
    client, settings = pg_client
    for _ in range(3):
        assert client.get("/v1/jobs").status_code == 200
    database = make_url(settings.database_url).database
    # As a Postgres restart would: every idle connection of the pool is closed by the server.
    pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' "
             "AND pid <> pg_backend_pid()")
    for _ in range(3):
        r = client.get("/v1/jobs")
        assert r.status_code == 200, r.text


def test_connections_opened_under_load_stay_open_for_the_next_burst(postgres_settings_factory):
    settings = postgres_settings_factory()
    configure_pool(settings.database_url, settings.db_pool)
    engine = engine_for(settings.database_url)
    opened = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    burst = settings.db_pool_size + settings.db_max_overflow
    for _ in range(2):
        connections = [engine.connect() for _ in range(burst)]
        for connection in connections:
            connection.close()
    # Opening a connection costs the server a process: a steady load beyond DB_POOL_SIZE reuses them.
    assert len(opened) == burst
