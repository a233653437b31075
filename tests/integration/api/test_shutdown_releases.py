"""An API that shuts down leaves no database connection open, and the deployment works on after it.

A process that stops an app (a reload, a test, an embedding server) keeps running; the database
connections of the app's engine (one per database URL in the process, `core.db.engine_for`) must
not outlive it. On the embedded deployment those are descriptors of the SQLite files (the
database, its WAL and shared memory); on Postgres, sessions of its database as the server lists
them. The broker's connections are kombu's, pooled for the process by broker URL, and serve the
next app of that URL (the second test).
"""

import os

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.main import create_app
from tests.support import PG_ADMIN_URL, jsonl, preference_rows, upload


def open_sqlite_files(database: str) -> set[str]:
    """The files of a SQLite database (itself, its WAL and shared memory) this process has open."""
    targets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed between the listing and the read
            pass
    return {path for path in targets if path.startswith(database)}


def postgres_sessions(database: str) -> int:
    """Sessions the server has open on `database`, from anyone."""
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
            return conn.execute(query, {"name": database}).scalar_one()
    finally:
        engine.dispose()


def use_database_and_broker(settings, project_key: str) -> None:
    """Start the app, upload a dataset and create a job (a database write and a broker message), stop it."""
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {project_key}"}) as client:
        dataset_id = upload(client, jsonl(preference_rows(4))).json()["id"]
        created = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                                "dataset_id": dataset_id})  # fmt: skip
        assert created.status_code == 201, created.text


def test_a_stopped_app_holds_no_database_connection(settings, project_key):
    use_database_and_broker(settings, project_key)
    if settings.database_url.startswith("sqlite"):
        assert open_sqlite_files(settings.database_url.removeprefix("sqlite:///")) == set()
    else:
        assert postgres_sessions(settings.database_url.rsplit("/", 1)[1]) == 0


def test_the_deployment_works_again_after_an_app_has_stopped(settings, project_key):
    use_database_and_broker(settings, project_key)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {project_key}"}) as client:
        listed = client.get("/v1/jobs")
        assert listed.status_code == 200 and len(listed.json()["data"]) == 1
