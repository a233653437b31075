"""Test data and small protocol helpers shared by the integration and end-to-end tests."""

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import redis
from sqlalchemy import create_engine, inspect, text

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


def new_project_key(settings: Settings, name: str = "test") -> str:
    """Create a project and return an API key of it."""
    from core.db import session_scope
    from core.projects import create_key, create_project

    with session_scope(settings.database_url) as session:
        project = create_project(session, name)
        _, key = create_key(session, project.id)
    return key


def project_of(settings: Settings, key: str) -> str:
    from core.db import session_scope
    from core.projects import authenticate

    with session_scope(settings.database_url) as session:
        return authenticate(session, key).id


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs with a learnable preference: the chosen answer is always the cheerful one."""
    rng = random.Random(seed)
    topics = ["the sky", "rain", "a cat", "tea", "music", "a river", "snow", "bread", "a book", "the sea"]
    rows = []
    for i in range(n):
        topic = rng.choice(topics)
        rows.append({"prompt": f"Q{i}: tell me about {topic}.",
                     "chosen": f"I love {topic}! Yes!", "rejected": f"no. {topic} is dull."})
    return rows


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def csv_file(rows: list[dict]) -> bytes:
    """Rows as a CSV file: a header of the first row's keys, then one record per row."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def parquet_file(rows: list[dict]) -> bytes:
    """Rows as a Parquet file, one column per key."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def upload(client, content: bytes, *, filename: str = "data.jsonl", kind: str = "preference",
           name: str | None = None):
    data = {"kind": kind} | ({"name": name} if name else {})
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Frames of an SSE body as dicts with id, event and decoded data (comments and retry dropped)."""
    frames = []
    for block in text.split("\n\n"):
        frame: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            frame[key] = value.removeprefix(" ")
        if "data" in frame:
            frame["data"] = json.loads(frame["data"])
            frames.append(frame)
    return frames


def queued_messages(settings) -> list[dict]:
    """Messages waiting in the job's Celery queue, read from the real broker."""
    if settings.celery_broker_url.startswith("redis"):
        client = redis.Redis.from_url(settings.celery_broker_url)
        raw = client.lrange(settings.training_queue, 0, -1)
        client.close()
        bodies = [json.loads(m) for m in raw]
    else:
        engine = engine_for(settings.celery_broker_url.removeprefix("sqla+"))
        if not inspect(engine).has_table("kombu_message"):
            return []  # kombu creates its tables with the first message
        with engine.connect() as conn:
            raw = conn.execute(text(
                "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = :q AND m.visible"), {"q": settings.training_queue}).scalars().all()
        bodies = [json.loads(m) for m in raw]
    return [{"id": b["headers"]["id"], "task": b["headers"]["task"], "args": json.loads(_decode(b))[0]}
            for b in bodies]


def _decode(body: dict) -> str:
    import base64
    return base64.b64decode(body["body"]).decode()


S3_TEST_URL = os.environ.get("TEST_S3_URL")  # an S3-compatible server to use instead of starting moto's


def s3_reachable(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port or 80)) == 0


@contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """Yield the endpoint of a real S3-protocol server: TEST_S3_URL, else moto's server on a free port."""
    if S3_TEST_URL:
        yield S3_TEST_URL
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_dir / "moto.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            if s3_reachable(endpoint):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited: {(log_dir / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("the S3 server did not start")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_settings(endpoint: str) -> dict[str, Any]:
    """Settings overrides that keep artifacts in a fresh bucket of the server at `endpoint`."""
    bucket = f"rlhf-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    return {"artifacts_url": f"s3://{bucket}/checkpoints", "artifacts_s3_endpoint_url": endpoint,
            "artifacts_s3_region": "us-east-1", "artifacts_s3_access_key_id": "test",
            "artifacts_s3_secret_access_key": "test"}


@contextmanager
def descriptors_past_select_limit(count: int = 1100) -> Iterator[None]:
    """Hold `count` descriptors open, so that the next ones a test opens number past 1024, where
    `select.select` refuses them: a long-lived API process with many connections gets there."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
