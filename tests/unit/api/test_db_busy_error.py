"""A lock wait that timed out is reported as a busy database, not an unreachable one."""

import sqlite3

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.errors import install_error_handlers


def _app(url: str) -> FastAPI:
    # No busy timeout: a write that finds the lock taken fails at once with SQLite's "database is locked".
    engine = create_engine(url, connect_args={"timeout": 0})
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    def write() -> dict:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        return {}

    return app


def test_locked_sqlite_is_busy_and_a_missing_database_is_unreachable(tmp_path):
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the one write lock
    try:
        r = TestClient(_app(f"sqlite:///{path}")).post("/write")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.status_code == 503
    assert "busy" in r.json()["error"]["message"] and "unreachable" not in r.json()["error"]["message"]

    r = TestClient(_app(f"sqlite:///{tmp_path}/missing/dir/db.sqlite")).post("/write")
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]
