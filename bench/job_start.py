"""Job start: seconds from a job's `running` status to its first metric, through a real API and worker.

    .venv/bin/python bench/job_start.py [--jobs 7] [--base <commit>]

An embedded deployment (SQLite file, kombu's SQLAlchemy transport) in a temporary directory: the
API (``rlhf-service api``) and one worker (``rlhf-service worker``) as their own processes, default
settings. One at a time, `--jobs` DPO jobs on ``builtin:tiny-llama`` (2 steps, a 96-row dataset) are
created and followed to their end; for each, from the database's own timestamps as the API returns
them:

- start: the `running` status event → the metric row of step 1 (what a user waits for),
- pick-up: the job's `created_at` → its `running` status event (broker delivery and claim),
- loaded: the `running` status event → the trainer's "loaded <model>" event (process start, imports,
  reading the job and its rows, building the model); the rest of the start is tokenising, the
  reference log-probs DPO precomputes, and step 1.

The first job of a worker is reported apart (``first``): it pays for whatever the worker prepares
lazily. The median is over the others.

With ``--base <commit>``, the same is measured on that commit's code, checked out with
``git worktree add`` into a temporary directory (same virtualenv, its own deployment), the jobs of
the two alternating, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from bench.service import new_key  # noqa: E402
from core.settings import Settings  # noqa: E402
from trainers.data.synthetic import uppercase_preference_rows  # noqa: E402

JOB = {"type": "dpo", "base_model": "builtin:tiny-llama", "seed": 0,
       "hyperparameters": {"max_steps": 2, "batch_size": 8, "checkpoint_every": 1000}}  # fmt: skip
DEADLINE = 300  # seconds for one job on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


class Variant:
    """One code tree (this checkout, or a worktree of another commit) as a running deployment."""

    def __init__(self, name: str, code: Path, root: Path) -> None:
        self.name, self.code, self.root = name, code, root
        root.mkdir(parents=True)
        self.settings = Settings(database_url=f"sqlite:///{root}/rlhf.db",
                                 celery_broker_url=f"sqla+sqlite:///{root}/broker.db",
                                 artifacts_dir=root / "artifacts", models_dir=root / "models",
                                 training_queue=f"bench-{name}")  # fmt: skip
        self.env = os.environ | {
            "DATABASE_URL": self.settings.database_url, "CELERY_BROKER_URL": self.settings.celery_broker_url,
            "ARTIFACTS_DIR": str(self.settings.artifacts_dir), "MODELS_DIR": str(self.settings.models_dir),
            "TRAINING_QUEUE": self.settings.training_queue, "HF_HUB_OFFLINE": "1",
        }  # fmt: skip
        # Each tree migrates its own database with its own migrations.
        subprocess.run([sys.executable, "-m", "core.cli", "migrate"], cwd=code, env=self.env, check=True)
        self.key = new_key(self.settings)
        port = free_port()
        self.api = self.start("api", "--port", str(port))
        self.worker = self.start("worker", "--hostname", f"bench-{name}@localhost")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {self.key}"},
                                 timeout=60)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        rows = "".join(json.dumps(row) + "\n" for row in uppercase_preference_rows(96, seed=1))
        r = self.http.post("/v1/datasets", data={"kind": "preference", "name": "bench"},
                           files={"file": ("rows.jsonl", rows.encode())})
        r.raise_for_status()
        self.dataset_id = r.json()["id"]
        self.starts: list[float] = []
        self.pickups: list[float] = []
        self.loads: list[float] = []

    def start(self, command: str, *args: str) -> subprocess.Popen:
        """`rlhf-service <command>` of this tree, in its own process group, logging under the root."""
        with open(self.root / f"{command}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "core.cli", command, *args], cwd=self.code, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def run_one(self) -> tuple[float, float]:
        """Create a job, wait for its end; its (start, pick-up) seconds."""
        job = self.http.post("/v1/jobs", json=JOB | {"dataset_id": self.dataset_id}).json()
        deadline = time.monotonic() + DEADLINE
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise RuntimeError(f"{self.name}: job {job['id']} stuck at {job['status']}:\n"
                                   + (self.root / "worker.log").read_text()[-4000:])
            time.sleep(0.2)
            job = self.http.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"{self.name}: job {job['id']} {job['status']}: {job['error']}")
        events = self.http.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        running = next(e["created_at"] for e in events if e["type"] == "status" and e["data"]["status"] == "running")
        loaded = next(e["created_at"] for e in events if e["message"].startswith("loaded "))
        self.loads.append(seconds(loaded, running))
        first = self.http.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 1}).json()["data"][0]
        assert first["step"] == 1
        start, pickup = seconds(first["created_at"], running), seconds(running, job["created_at"])
        self.starts.append(start)
        self.pickups.append(pickup)
        return start, pickup

    def summary(self) -> dict[str, Any]:
        rest = self.starts[1:]
        return {"first_s": self.starts[0], "median_s": statistics.median(rest), "min_s": min(rest),
                "max_s": max(rest), "pickup_median_s": statistics.median(self.pickups[1:]),
                "loaded_median_s": statistics.median(self.loads[1:]),
                "starts_s": [round(s, 2) for s in self.starts]}  # fmt: skip

    def stop(self) -> None:
        self.http.close()
        for proc in (self.worker, self.api):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def worktree(commit: str, path: Path):
    """`commit` checked out (detached) at `path`, removed afterwards."""
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=7, help="jobs per code tree (the first is reported apart)")
    parser.add_argument("--base", default=None, help="also measure this commit's code, alternating")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-job-start-") as tmp, ExitStack() as stack:
        trees = {"current": ROOT}
        if args.base:
            trees = {"base": stack.enter_context(worktree(args.base, Path(tmp) / "base-code"))} | trees
        variants = []
        for name, code in trees.items():
            variant = Variant(name, code, Path(tmp) / name)
            stack.callback(variant.stop)
            variants.append(variant)
        for i in range(args.jobs):
            for variant in variants:
                start, pickup = variant.run_one()
                print(f"{variant.name} job {i + 1}: start {start:.2f} s, pick-up {pickup:.2f} s", flush=True)
        print("| code | first job | median start (min-max) | median loaded | median pick-up |\n|---|---|---|---|---|")
        for variant in variants:
            s = variant.summary()
            print(f"| {variant.name} | {s['first_s']:.2f} s | {s['median_s']:.2f} s ({s['min_s']:.2f}-{s['max_s']:.2f})"
                  f" | {s['loaded_median_s']:.2f} s | {s['pickup_median_s']:.2f} s |")
            print(json.dumps({variant.name: s}))
    from bench.common import machine

    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps({"machine": machine(), "load_average_1_5_15": os.getloadavg(), "date": date}))


if __name__ == "__main__":
    main()
