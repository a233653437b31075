"""Alembic revisions apply, revert and re-apply on SQLite and Postgres, and match the models."""

import uuid

import pytest
from alembic import command
from sqlalchemy import inspect

from core.db import make_engine
from core.migrate import alembic_config, downgrade, upgrade
from core.models import Base
from tests.support import pg_admin, pg_url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/m.db"
        return
    name = f"rlhf_mig_{uuid.uuid4().hex[:10]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    yield pg_url(name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url):
    engine = make_engine(url)
    names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    return names


def test_upgrade_downgrade_upgrade(url):
    upgrade(url)
    assert tables(url) == set(Base.metadata.tables)
    downgrade(url, "base")
    assert tables(url) == set()
    upgrade(url)
    assert tables(url) == set(Base.metadata.tables)
    # the schema the revisions build is exactly the models' schema
    command.check(alembic_config(url))


def test_revision_files_are_dated():
    from pathlib import Path

    import migrations
    files = sorted((Path(migrations.__file__).parent / "versions").glob("*.py"))
    assert files and all(f.name[:10].replace("_", "").isdigit() for f in files)
