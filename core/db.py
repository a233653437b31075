"""Engine and session factory; SQLite gets WAL and a busy timeout so api, worker and trainer can share it."""

import logging
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class PoolOptions:
    """Connections an engine keeps (`size`), may open beyond them (`max_overflow`), and how long a
    checkout waits for one before sqlalchemy's TimeoutError (`timeout_seconds`)."""

    size: int = 5
    max_overflow: int = 10
    timeout_seconds: float = 10.0


def make_engine(url: str, pool: PoolOptions | None = None) -> Engine:
    """Create an engine for `url`, creating the directory of a SQLite file if needed."""
    pool = pool or PoolOptions()
    sizing = {"pool_size": pool.size, "max_overflow": pool.max_overflow, "pool_timeout": pool.timeout_seconds}
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # A Postgres connection costs the server a process: one opened under load stays open for the
        # next request instead of being closed on return (a steady load past `size` opened and closed
        # one per request). At most `size + max_overflow` either way, opened only when needed.
        sizing |= {"pool_size": pool.size + pool.max_overflow, "max_overflow": 0}
        engine = create_engine(url, **sizing)
        event.listen(engine, "checkout", _refuse_closed)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **sizing)
    else:
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every SQLite test
        cur = dbapi_conn.cursor()
        # WAL lets the API read while a trainer writes; foreign keys are off by default in SQLite.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _refuse_closed(dbapi_conn, _record, _proxy) -> None:
    """Replace a pooled connection the server has closed (a restart, a terminated backend).

    An idle connection receives nothing unless the server is ending it, so a readable socket means
    a closed one: a poll with no wait finds it without the round trip `pool_pre_ping` costs on every
    checkout. DisconnectionError makes the pool discard it and connect afresh.
    """
    try:
        if dbapi_conn.closed:
            raise DisconnectionError("the connection is closed")
        poller = select.poll()
        poller.register(dbapi_conn.fileno(), select.POLLIN)
        if poller.poll(0):
            raise DisconnectionError("the server closed the connection")
    except (OSError, ValueError) as exc:  # no socket any more
        raise DisconnectionError(str(exc)) from exc


_pools: dict[str, PoolOptions] = {}
_engines: dict[str, tuple[PoolOptions, Engine, sessionmaker[Session]]] = {}
_lock = threading.Lock()


def configure_pool(url: str, pool: PoolOptions) -> None:
    """Size the pool of `url`'s engine in this process; an engine made with other sizes is replaced."""
    with _lock:
        _pools[url] = pool
        made = _engines.get(url)
        if made is not None and made[0] != pool:
            _engines.pop(url)[1].dispose()


def release_engine(url: str) -> None:
    """Close the pooled connections of `url`'s engine in this process and forget it (the next use makes another).

    An app that stops calls it, so that nothing it opened outlives it in a process that goes on.
    """
    with _lock:
        made = _engines.pop(url, None)
    if made is not None:
        made[1].dispose()


def _made(url: str) -> tuple[PoolOptions, Engine, sessionmaker[Session]]:
    with _lock:
        if url not in _engines:
            pool = _pools.get(url, PoolOptions())
            engine = make_engine(url, pool)
            _engines[url] = pool, engine, sessionmaker(engine, expire_on_commit=False)
        return _engines[url]


def engine_for(url: str) -> Engine:
    """One engine per URL per process, its pool sized by `configure_pool` (else the defaults)."""
    return _made(url)[1]


def session_factory(url: str) -> sessionmaker[Session]:
    return _made(url)[2]


def retry_on_outage(fn: Callable[[], T], *, grace_seconds: float, what: str) -> T:
    """Call `fn`, retrying with backoff while the database is unreachable, for up to `grace_seconds`.

    A training run should ride out a database restart rather than fail a job hours in; errors
    other than lost connections (and an outage longer than the grace) propagate.
    """
    deadline, delay = time.monotonic() + grace_seconds, 0.25
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable while %s (%s); retrying in %.1f s", what, exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
