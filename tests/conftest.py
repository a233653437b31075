"""Shared fixtures: settings for a fresh database on each backend, and an API client.

`embedded` is the default deployment (SQLite file + kombu's SQLAlchemy transport on SQLite);
`postgres` is the production shape (PostgreSQL + Redis) on the real servers of this machine. Each
test gets its own database (Postgres: copied from a migrated template, which is fast) and its own
Celery queue name, so tests never see each other's rows or messages.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import engine_for
from core.migrate import upgrade
from core.settings import Settings
from tests.support import BACKENDS, embedded_settings, new_project_key, pg_admin, pg_url, postgres_deployments

# Under pytest-xdist the cores are shared by the workers: each worker's torch (and every process it
# starts, which inherits the variable) gets its share of the threads instead of one per core, so the
# workers do not oversubscribe the cores. Set before any test imports torch.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, copied for each test that needs Postgres."""
    name = f"rlhf_tmpl_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    upgrade(pg_url(name))
    engine_for(pg_url(name)).dispose()
    yield name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
def project_key(settings: Settings) -> str:
    """An API key of a fresh project."""
    return new_project_key(settings)


@pytest.fixture
def client(settings: Settings, project_key: str):
    """An API client authenticated as a project."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {project_key}"}) as client:
        yield client


@pytest.fixture
def app_client_factory(settings: Settings):
    """Make more API clients of the same deployment, each with its own key."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    def make(key: str) -> TestClient:
        return TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"})

    return make


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3-protocol server for the session (moto's, started here unless TEST_S3_URL names one)."""
    from tests.support import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_overrides(s3_endpoint: str) -> dict:
    """Settings overrides keeping artifacts in a fresh bucket of the session's S3 server."""
    from tests.support import s3_settings

    return s3_settings(s3_endpoint)
