"""Service benchmarks: job-creation latency, dataset ingest, metrics latency from trainer to SSE client.

    .venv/bin/python bench/service.py [--deployment embedded|postgres|all] [--clients 32] [--rows 100000]

Each deployment is fresh: the embedded one (SQLite file, kombu's SQLAlchemy transport on SQLite,
DB polling for live events) in a temporary directory, and the production one (a new Postgres
database on the local server, Redis db 13 as broker and pub/sub, a private queue name), dropped
afterwards. The API runs as its own process (``uvicorn api.main:app``, as ``rlhf-service api``
starts it); no worker runs, so created jobs stay queued and the figures are the API's alone.

- job creation: `--clients` threads, each with its own HTTP connection and a project API key,
  send `--requests` ``POST /v1/jobs`` each, all starting together; latency per request, p50/p99.
- dataset ingest: one ``POST /v1/datasets`` of a `--rows`-row preference JSONL file; rows per
  second of the whole request, and the API process's peak RSS (VmHWM) before and after.
- metrics latency: a `worker.reporting.JobReporter` (the training process's callbacks) calls
  ``on_metrics`` then ``flush`` for one step at a time, while a client reads
  ``GET /v1/jobs/{id}/stream``; latency from just before ``on_metrics`` to the SSE frame's arrival.

Figures are merged into bench/results.json and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from bench.trainers_vs_trl import record_service_figures  # noqa: E402
from core.settings import Settings  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"


@contextmanager
def deployment(kind: str, root: Path) -> Iterator[Settings]:
    """Settings of a fresh, migrated deployment of `kind`; a Postgres database is dropped afterwards."""
    from sqlalchemy import create_engine, text

    from core.db import engine_for
    from core.migrate import upgrade

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    if kind == "embedded":
        settings = Settings(database_url=f"sqlite:///{root}/rlhf.db",
                            celery_broker_url=f"sqla+sqlite:///{root}/broker.db", artifacts_dir=root / "artifacts",
                            models_dir=root / "models", training_queue=queue)  # fmt: skip
        upgrade(settings.database_url)
        yield settings
        return
    name = f"rlhf_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    settings = Settings(database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", celery_broker_url=REDIS_URL,
                        artifacts_dir=root / "artifacts", models_dir=root / "models", training_queue=queue)  # fmt: skip
    try:
        upgrade(settings.database_url)
        yield settings
    finally:
        import redis

        engine_for(settings.database_url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(queue)
        client.close()


def new_key(settings: Settings) -> str:
    """An API key of a new project."""
    from core.db import session_scope
    from core.projects import create_key, create_project

    with session_scope(settings.database_url) as session:
        project = create_project(session, "bench")
        _, key = create_key(session, project.id)
    return key


class Api:
    """The API as its own process on a free port."""

    def __init__(self, settings: Settings, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = os.environ | {
            "DATABASE_URL": settings.database_url, "CELERY_BROKER_URL": settings.celery_broker_url,
            "ARTIFACTS_DIR": str(settings.artifacts_dir), "MODELS_DIR": str(settings.models_dir),
            "TRAINING_QUEUE": settings.training_queue, "HF_HUB_OFFLINE": "1",
        }  # fmt: skip
        cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning"]  # fmt: skip
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the API did not become ready:\n" + log.read_text()[-4000:])

    def peak_rss_mib(self) -> float:
        """The API process's peak resident set size so far (VmHWM), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def preference_jsonl(path: Path, rows: int) -> None:
    """A preference file of `rows` rows of about 120 bytes."""
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"prompt": f"Q{i}: tell me about topic {i % 97}.", "chosen": f"I love topic {i}! Yes!",
                                "rejected": f"no. topic {i} is dull."}) + "\n")  # fmt: skip


def upload(api: Api, key: str, path: Path) -> tuple[str, float]:
    """Upload a preference file; return the dataset id and the request's seconds."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        r = httpx.post(api.url + "/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=600,
                       files={"file": (path.name, f, "application/jsonl")}, data={"kind": "preference"})  # fmt: skip
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return r.json()["id"], elapsed


def job_creation(api: Api, key: str, dataset_id: str, clients: int, requests: int) -> dict[str, float]:
    """Latencies of ``POST /v1/jobs`` from `clients` concurrent clients, `requests` each."""
    body = {"type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset_id}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            http.get("/healthz")  # open the connection before the clock starts
            barrier.wait()
            for _ in range(requests):
                start = time.perf_counter()
                r = http.post("/v1/jobs", json=body)
                elapsed = time.perf_counter() - start
                with lock:
                    (latencies if r.status_code == 201 else failures).append(elapsed if r.status_code == 201
                                                                             else f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} job creations failed, e.g. {failures[0]}")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * cuts[98], "max_ms": 1000 * max(latencies),
            "jobs_per_s": len(latencies) / wall, "requests": len(latencies)}  # fmt: skip


def metrics_latency(settings: Settings, api: Api, key: str, dataset_id: str, samples: int) -> dict[str, float]:
    """Seconds from a trainer's ``on_metrics`` (flushed at once) to the SSE frame at a stream client."""
    from core.artifacts import ArtifactStore
    from core.db import session_scope
    from core.lifecycle import claim_job
    from worker.reporting import JobReporter

    http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    job_id = http.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                         "dataset_id": dataset_id}).json()["id"]  # fmt: skip
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with http.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=None) as response:
            ready.set()
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event == "metrics":
                    arrived[json.loads(line.partition(":")[2])["step"]] = time.perf_counter()
                    if len(arrived) == samples:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(30)
    time.sleep(1.0)  # the stream has sent what existed and is waiting for news
    with session_scope(settings.database_url) as session:  # no worker runs: the bench holds the lease
        lease = claim_job(session, job_id, "bench")
    reporter = JobReporter(url=settings.database_url, lease=lease, store=ArtifactStore(settings.artifacts_dir),
                           broker_url=settings.celery_broker_url)  # fmt: skip
    sent: dict[int, float] = {}
    rng = random.Random(0)
    for step in range(1, samples + 1):
        sent[step] = time.perf_counter()
        reporter.on_metrics(step, {"train/loss": 1.0 / step})
        reporter.flush()
        deadline = time.monotonic() + 10
        while step not in arrived and time.monotonic() < deadline:
            time.sleep(0.001)
        # One step at a time, each after a random pause, so the sends fall anywhere in the stream's
        # polling period instead of locking onto its phase.
        time.sleep(0.05 + rng.uniform(0, settings.stream_poll_seconds))
    listener.join(10)
    http.close()
    latencies = [arrived[s] - sent[s] for s in sent if s in arrived]
    if len(latencies) < samples:
        raise RuntimeError(f"only {len(latencies)} of {samples} metrics reached the stream")
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * cuts[98], "max_ms": 1000 * max(latencies),
            "samples": len(latencies), "stream_poll_seconds": settings.stream_poll_seconds}  # fmt: skip


def bench_deployment(kind: str, args: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    """Every service figure of one deployment, as benchmark entries."""
    entries = []
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, deployment(kind, Path(tmp)) as settings:
        root = Path(tmp)
        key = new_key(settings)
        small, big = root / "small.jsonl", root / "big.jsonl"
        preference_jsonl(small, 10)
        preference_jsonl(big, args.rows)
        api = Api(settings, root / "api.log")
        try:
            dataset_id, _ = upload(api, key, small)
            job_creation(api, key, dataset_id, 4, 2)  # warm-up: imports, connection pools
            created = job_creation(api, key, dataset_id, args.clients, args.requests)
            print(f"{kind}: job creation {json.dumps(created)}", flush=True)
            idle_rss = api.peak_rss_mib()
            _, seconds = upload(api, key, big)
            ingest = {"rows_per_s": args.rows / seconds, "seconds": seconds, "api_peak_rss_mib": api.peak_rss_mib(),
                      "api_peak_rss_before_mib": idle_rss, "file_mib": big.stat().st_size / 2**20}  # fmt: skip
            print(f"{kind}: ingest {json.dumps(ingest)}", flush=True)
            latency = metrics_latency(settings, api, key, dataset_id, args.samples)
            print(f"{kind}: metrics latency {json.dumps(latency)}", flush=True)
        finally:
            api.stop()
    what = {"embedded": "SQLite + kombu SQLAlchemy transport, DB polling", "postgres": "Postgres + Redis pub/sub"}
    for name, value, units, extra in [
        ("job_create_p50", created["p50_ms"], "ms", created), ("job_create_p99", created["p99_ms"], "ms", created),
        ("ingest_rows_per_s", ingest["rows_per_s"], "rows/s", ingest),
        ("ingest_api_peak_rss", ingest["api_peak_rss_mib"], "MiB", ingest),
        ("metrics_latency_p50", latency["p50_ms"], "ms", latency),
        ("metrics_latency_p99", latency["p99_ms"], "ms", latency),
    ]:  # fmt: skip
        entries.append({"name": f"service/{kind}/{name}", "what": what[kind], "units": units, "ours": value,
                        "trl": None, "ratio": None, "details": extra})  # fmt: skip
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="all", choices=["embedded", "postgres", "all"])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients creating jobs")
    parser.add_argument("--requests", type=int, default=10, help="jobs created by each client")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the ingested preference file")
    parser.add_argument("--samples", type=int, default=40, help="metrics steps sent through the stream")
    args = parser.parse_args(argv)
    command = "python bench/service.py " + " ".join(argv if argv is not None else sys.argv[1:])

    kinds = ["embedded", "postgres"] if args.deployment == "all" else [args.deployment]
    entries = [e for kind in kinds for e in bench_deployment(kind, args, command)]
    record_service_figures(entries, command)


if __name__ == "__main__":
    main()
