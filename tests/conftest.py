"""Shared fixtures: settings for a fresh database on each backend, and an API client.

`embedded` is the default deployment (SQLite file + kombu's SQLAlchemy transport on SQLite);
`postgres` is the production shape (PostgreSQL + Redis) on the real servers of this machine. Each
test gets its own database (Postgres: copied from a migrated template, which is fast) and its own
Celery queue name, so tests never see each other's rows or messages.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from core.db import engine_for
from core.migrate import upgrade
from core.settings import Settings

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BACKENDS = ["embedded", "postgres"]


def pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def pg_admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, copied for each test that needs Postgres."""
    name = f"rlhf_tmpl_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    upgrade(pg_url(name))
    engine_for(pg_url(name)).dispose()
    yield name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def embedded_settings(root: Path, **overrides) -> Settings:
    """Settings of the embedded mode under `root`, database migrated."""
    settings = Settings(
        database_url=f"sqlite:///{root}/rlhf.db",
        celery_broker_url=f"sqla+sqlite:///{root}/broker.db",
        artifacts_dir=root / "artifacts", models_dir=root / "models",
        training_queue=f"training-{uuid.uuid4().hex[:8]}", stream_poll_seconds=0.1, **overrides,
    )
    upgrade(settings.database_url)
    return settings


@contextmanager
def postgres_deployments(template: str, root: Path) -> Iterator:
    """Yield a maker of settings on fresh Postgres databases and private Redis queues; drop them after."""
    made: list[Settings] = []

    def make(**overrides) -> Settings:
        name = f"rlhf_test_{uuid.uuid4().hex[:10]}"
        pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        settings = Settings(
            database_url=pg_url(name), celery_broker_url=REDIS_URL,
            artifacts_dir=root / "artifacts", models_dir=root / "models",
            training_queue=f"training-{uuid.uuid4().hex[:8]}", stream_poll_seconds=0.1, **overrides,
        )
        made.append(settings)
        return settings

    try:
        yield make
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for settings in made:
            engine_for(settings.database_url).dispose()
            pg_admin(f'DROP DATABASE IF EXISTS "{settings.database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
            client.delete(settings.training_queue)
        client.close()


@pytest.fixture
def postgres_settings_factory(pg_template: str, tmp_path: Path):
    with postgres_deployments(pg_template, tmp_path) as make:
        yield make


@pytest.fixture(params=BACKENDS)
def settings(request, tmp_path: Path) -> Settings:
    """Settings of a fresh, migrated deployment on each backend."""
    if request.param == "embedded":
        return embedded_settings(tmp_path)
    return request.getfixturevalue("postgres_settings_factory")()


@pytest.fixture
def client(settings: Settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        yield client
