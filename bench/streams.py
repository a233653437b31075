"""Live streams under load: many SSE clients of one running job while other clients read the API.

    .venv/bin/python bench/streams.py [--deployment embedded|postgres|all] [--streams 200] [--readers 64]

Each deployment is fresh (as in bench/service.py, whose helpers this uses): the API runs as its own
process with the default settings (database pool 5 + 10), and no worker runs.

- `--streams` clients (one process, asyncio, one HTTP connection each) open
  ``GET /v1/jobs/{id}/stream`` on one job and read until the stream closes;
- the bench then plays the training process: a `worker.reporting.JobReporter` under the job's
  lease reports one step every 1 / `--rate` seconds (``on_metrics`` then ``flush``, which also
  publishes the wake-up), `--steps` steps, then the job succeeds;
- meanwhile `--readers` clients (another process, asyncio) each send ``GET /v1/jobs/{id}``,
  ``GET /v1/jobs/{id}/metrics`` and ``GET /v1/jobs`` in turn, back to back, until the run ends.

Reported: whether every stream received every step once and in order and then the terminal status,
the latency from ``flush`` to a step's arrival at the streams (p50/p99 over all streams and steps),
the readers' request latency (p50/p99), their count of 5xx answers, and the API's CPU time per reader
request. Figures are merged into
bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from bench.service import Api, deployment, new_key, preference_jsonl, upload  # noqa: E402
from bench.trainers_vs_trl import record_service_figures  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": 1000 * statistics.median(values), "p99_ms": 1000 * cuts[98], "max_ms": 1000 * max(values)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that are still running (uvicorn workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# 0. a minimal HTTP/1.1 client: the clients share the API's 2 cores, so they must cost it little
# (httpx spends several times the API's own CPU per request)

class Connection:
    """One keep-alive HTTP/1.1 connection to the API."""

    def __init__(self, url: str, key: str) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port, self.key = int(port), key

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        return self

    async def request(self, path: str) -> tuple[int, dict[str, str]]:
        """Send a GET; read the status line and the headers."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
                          f"Accept: */*\r\n\r\n".encode())
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def get(self, path: str) -> int:
        """The status of a GET, its body read and dropped."""
        status, headers = await self.request(path)
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        else:
            async for _ in self.chunks():
                pass
        return status

    async def chunks(self):
        """The chunks of a chunked body, as they arrive."""
        while size := int((await self.reader.readline()).strip() or b"0", 16):
            yield await self.reader.readexactly(size)
            await self.reader.readline()
        await self.reader.readline()

    def close(self) -> None:
        self.writer.close()


# 1. the stream clients (own process)

async def follow(url: str, key: str, job_id: str, connected: asyncio.Event, count: list[int],
                 total: int) -> dict[str, Any]:
    """Read one stream to its end: the steps in arrival order, their arrival times, the last status."""
    steps: list[int] = []
    arrivals: dict[int, float] = {}
    status, event = None, None
    conn = await Connection(url, key).open()
    try:
        code, _ = await conn.request(f"/v1/jobs/{job_id}/stream")
        count[0] += 1
        if count[0] == total:
            connected.set()
        if code != 200:
            return {"http_status": code, "steps": [], "arrivals": {}, "status": None}
        pending = b""
        async for chunk in conn.chunks():
            now = time.time()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"event:"):
                    event = line[6:].strip()
                elif line.startswith(b"data:"):
                    if event == b"metrics":
                        step = json.loads(line[5:])["step"]
                        steps.append(step)
                        arrivals.setdefault(step, now)
                    elif event == b"status":
                        status = json.loads(line[5:]).get("status")
    finally:
        conn.close()
    return {"http_status": 200, "steps": steps, "arrivals": arrivals, "status": status}


def run_streams(url: str, key: str, job_id: str, n: int, conn) -> None:
    async def main() -> list[dict[str, Any]]:
        connected, count = asyncio.Event(), [0]
        tasks = [asyncio.create_task(follow(url, key, job_id, connected, count, n)) for _ in range(n)]
        await asyncio.wait_for(connected.wait(), 300)
        conn.send("connected")
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    conn.send([r if isinstance(r, dict) else {"error": repr(r)} for r in results])


# 2. the readers (own process)

def run_readers(url: str, key: str, job_id: str, n: int, stop, conn) -> None:
    paths = [f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics?limit=20", "/v1/jobs?limit=20"]

    async def reader(http: Connection, i: int, latencies: list[float], codes: dict[int, int]) -> None:
        j = i
        while not stop.is_set():
            start = time.perf_counter()
            try:
                code = await http.get(paths[j % len(paths)])
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                code = 0  # no answer at all
                http.close()
                await http.open()
            latencies.append(time.perf_counter() - start)
            codes[code] = codes.get(code, 0) + 1
            j += 1

    async def main() -> tuple[list[float], dict[int, int]]:
        latencies: list[float] = []
        codes: dict[int, int] = {}
        connections = [await Connection(url, key).open() for _ in range(n)]
        for http in connections:  # each connection accepted before the clock starts
            await http.get("/healthz")
        conn.send("ready")
        await asyncio.gather(*(reader(http, i, latencies, codes) for i, http in enumerate(connections)))
        for http in connections:
            http.close()
        return latencies, codes

    conn.send(asyncio.run(main()))


# 3. the writer, the run and its figures

def bench_deployment(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from core.artifacts import ArtifactStore
    from core.db import session_scope
    from core.lifecycle import claim_job, transition
    from core.models import JobStatus
    from core.notify import publish
    from worker.reporting import JobReporter

    streams = args.streams if kind == "postgres" else args.embedded_streams
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp, deployment(kind, Path(tmp)) as settings:
        root = Path(tmp)
        key = new_key(settings)
        preference_jsonl(root / "small.jsonl", 10)
        api = Api(settings, root / "api.log")
        try:
            dataset_id, _ = upload(api, key, root / "small.jsonl")
            job_id = httpx.post(api.url + "/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                      "dataset_id": dataset_id}).json()["id"]
            with session_scope(settings.database_url) as session:  # no worker runs: the bench holds the lease
                lease = claim_job(session, job_id, "bench")
            reporter = JobReporter(url=settings.database_url, lease=lease, broker_url=settings.celery_broker_url,
                                   store=ArtifactStore(settings.artifacts_dir))

            streams_end, streams_conn = ctx.Pipe()
            follower = ctx.Process(target=run_streams, args=(api.url, key, job_id, streams, streams_conn))
            follower.start()
            if not streams_end.poll(300) or streams_end.recv() != "connected":
                raise RuntimeError("the streams did not all connect")
            stop = ctx.Event()
            readers_end, readers_conn = ctx.Pipe()
            cpu_before = cpu_seconds(api.proc.pid)
            readers = ctx.Process(target=run_readers, args=(api.url, key, job_id, args.readers, stop, readers_conn))
            readers.start()
            if not readers_end.poll(300) or readers_end.recv() != "ready":
                raise RuntimeError("the readers did not start")
            time.sleep(1.0)  # the readers are up to speed

            sent: dict[int, float] = {}
            load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
            started = time.monotonic()
            for step in range(1, args.steps + 1):
                time.sleep(max(0.0, started + step / args.rate - time.monotonic()))
                sent[step] = time.time()
                reporter.on_metrics(step, {"train/loss": 1.0 / step})
                reporter.flush()
            stop.set()
            load_after = os.getloadavg()[0]
            latencies, codes = readers_end.recv()
            readers.join(60)
            api_cpu = cpu_seconds(api.proc.pid) - cpu_before
            with session_scope(settings.database_url) as session:
                transition(session, job_id, JobStatus.succeeded)
            publish(settings.celery_broker_url, job_id)
            if not streams_end.poll(300):
                raise RuntimeError("the streams did not close after the terminal status")
            results = streams_end.recv()
            follower.join(60)
            rss = api.peak_rss_mib()
        finally:
            api.stop()

    expected = list(range(1, args.steps + 1))
    complete = sum(1 for r in results if r.get("steps") == expected and r.get("status") == "succeeded")
    delivery = [r["arrivals"][s] - sent[s] for r in results for s in r.get("arrivals", {}) if s in sent]
    five_xx = sum(n for code, n in codes.items() if code >= 500 or code == 0)
    figures = {
        "deployment": kind, "streams": streams, "streams_complete": complete, "steps": args.steps,
        "rate_per_s": args.rate, "readers": args.readers, "reader_requests": len(latencies),
        "reader_5xx": five_xx, "reader_codes": {str(c): n for c, n in sorted(codes.items())},
        "reader": percentiles(latencies), "delivery": percentiles(delivery), "api_peak_rss_mib": rss,
        # the API's CPU time while the readers ran, per reader request (the streams' work included)
        "api_cpu_ms_per_reader_request": 1000 * api_cpu / max(1, len(latencies)),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "failures": [r for r in results if r.get("steps") != expected or r.get("status") != "succeeded"][:3],
    }
    print(f"{kind}: {json.dumps({k: v for k, v in figures.items() if k != 'failures'})}", flush=True)
    if figures["failures"]:
        print(f"{kind}: incomplete streams, e.g. {json.dumps(figures['failures'])[:2000]}", flush=True)
    return figures


def entries_of(f: dict[str, Any]) -> list[dict[str, Any]]:
    what = {"embedded": "SQLite + kombu SQLAlchemy transport, DB polling", "postgres": "Postgres + Redis pub/sub"}
    details = {k: v for k, v in f.items() if k != "failures"}
    kind = f["deployment"]
    load = f"{f['streams']}_streams_{f['readers']}_readers"
    return [{"name": f"streams/{kind}/{load}/{name}", "what": what[kind], "units": units, "ours": value, "trl": None,
             "ratio": None, "details": details}
            for name, value, units in [
                ("streams_complete", f["streams_complete"], f"of {f['streams']}"),
                ("delivery_p50", f["delivery"]["p50_ms"], "ms"), ("delivery_p99", f["delivery"]["p99_ms"], "ms"),
                ("reader_p50", f["reader"]["p50_ms"], "ms"), ("reader_p99", f["reader"]["p99_ms"], "ms"),
                ("reader_5xx", f["reader_5xx"], "responses")]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="all", choices=["embedded", "postgres", "all"])
    parser.add_argument("--streams", type=int, default=200, help="stream clients on Postgres + Redis")
    parser.add_argument("--embedded-streams", type=int, default=50, help="stream clients on the embedded mode")
    parser.add_argument("--readers", type=int, default=64, help="concurrent clients of ordinary GETs")
    parser.add_argument("--steps", type=int, default=100, help="metrics steps the writer reports")
    parser.add_argument("--rate", type=float, default=10.0, help="steps reported per second")
    args = parser.parse_args(argv)
    command = "python bench/streams.py " + " ".join(argv if argv is not None else sys.argv[1:])

    kinds = ["embedded", "postgres"] if args.deployment == "all" else [args.deployment]
    figures = [bench_deployment(kind, args) for kind in kinds]
    entries = [e for f in figures for e in entries_of(f)]
    record_service_figures(entries, command)


if __name__ == "__main__":
    main()
