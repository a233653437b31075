"""Helpers of the end-to-end tests: deployments as real processes, datasets, following a job, waiting, README blocks."""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.support import embedded_settings, jsonl, new_project_key, parse_sse, postgres_deployments
from trainers.data.synthetic import uppercase_preference_rows

DEADLINE = 240  # seconds for any one job to finish on a 2-core machine
ROOT = Path(__file__).resolve().parents[2]


def section_blocks(markdown: str, heading: str, lang: str = "bash") -> list[str]:
    """The fenced `lang` code blocks of one section: from `heading` to the next `## ` heading outside a fence."""
    lines = markdown.splitlines()
    blocks: list[str] = []
    block: list[str] | None = None
    fence_lang = ""
    for line in lines[lines.index(heading) + 1:]:
        if block is None and line.startswith("## "):
            break
        if line.startswith("```"):
            if block is None:
                block, fence_lang = [], line[3:].strip()
            else:
                if fence_lang == lang:
                    blocks.append("\n".join(block) + "\n")
                block = None
        elif block is not None:
            block.append(line)
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """An API process and a worker process on one set of settings; the worker can be killed and restarted."""

    def __init__(self, settings, root: Path, **env: str) -> None:
        self.settings, self.root, self.port = settings, root, free_port()
        self.env = os.environ | {
            "DATABASE_URL": settings.database_url, "CELERY_BROKER_URL": settings.celery_broker_url,
            "ARTIFACTS_DIR": str(settings.artifacts_dir), "MODELS_DIR": str(settings.models_dir),
            "TRAINING_QUEUE": settings.training_queue, "STREAM_POLL_SECONDS": "0.2",
            "HEARTBEAT_SECONDS": "1", "HF_HUB_OFFLINE": "1", "TORCH_THREADS": "1", **env,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers_started = 0
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                   headers={"Authorization": f"Bearer {new_project_key(settings)}"})

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        # Own process group, so a test can kill a process together with everything it started.
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "core.cli", *args], env=self.env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_api(self) -> None:
        self._start("api", ["api", "--port", str(self.port)])
        for _ in range(120):
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail("the API did not become ready:\n" + self.log("api"))

    def start_worker(self, name: str = "worker") -> None:
        """Start a worker process; give a second one its own `name` to run two at once."""
        self.workers_started += 1
        self._start(name, ["worker", "--hostname", f"e2e-{self.port}-{self.workers_started}@localhost"])

    def signal_worker(self, sig: signal.Signals, name: str = "worker") -> None:
        """Send `sig` to a worker's whole process group (Celery, its pool, the training process)."""
        os.killpg(self.procs[name].pid, sig)

    def kill_worker(self) -> None:
        """SIGKILL the worker and every process it started (pool processes, the training process)."""
        proc = self.procs.pop("worker")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-8000:] if path.exists() else ""

    def stop(self) -> None:
        self.client.close()
        for proc in self.procs.values():
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def deployment(request, root: Path, *, backend: str | None = None, **env: str):
    """Settings of a fresh deployment of the requested backend, with its processes started."""
    backend = backend or request.param
    with ExitStack() as stack:
        if backend == "embedded":
            settings = embedded_settings(root)
        else:
            make = stack.enter_context(postgres_deployments(request.getfixturevalue("pg_template"), root))
            settings = make()
        dep = Deployment(settings, root, **env)
        try:
            dep.start_api()
            dep.start_worker()
            yield dep
        finally:
            dep.stop()
            if request.node.session.testsfailed:
                for name in ("api", "worker", *(n for n in dep.procs if n not in ("api", "worker"))):
                    print(f"--- {name} log ---\n{dep.log(name)}")


def create_dataset(client, rows=None) -> str:
    rows = uppercase_preference_rows(96, seed=1) if rows is None else rows
    r = client.post("/v1/datasets", data={"kind": "preference", "name": "uppercase"},
                    files={"file": ("pairs.jsonl", jsonl(rows))})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def stream_until_done(client, job_id: str) -> list[dict]:
    text = []
    with client.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=DEADLINE) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_text():
            text.append(chunk)
    return parse_sse("".join(text))


# Heartbeats every 0.5 s against a 6 s lease: a live worker never looks lost, even on a loaded machine.
SHORT_LEASE = {"HEARTBEAT_SECONDS": "0.5", "LEASE_SECONDS": "6", "REAPER_INTERVAL_SECONDS": "0.5"}


def wait_for_log(dep: Deployment, name: str, text: str) -> None:
    """Wait until process `name` of the deployment has logged `text`."""
    deadline = time.monotonic() + DEADLINE
    while text not in dep.log(name):
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never logged {text!r}:\n{dep.log(name)}")
        time.sleep(0.3)


def wait_for(client, job_id: str, predicate, what: str, *, poll: float = 0.3) -> dict:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(poll)
    pytest.fail(f"job {job_id} never reached {what}: {job}")




PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), Path("/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A PostgreSQL server of the test's own, on a spare port, that the test may stop and start."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.root, self.port = Path(tempfile.mkdtemp(prefix="rlhf-pg-")), free_port()
        shutil.chown(self.root, "postgres")
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, cmd: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-w", "-l",
                           str(self.root / "log"), "-o", f"-p {self.port} -k {self.root} -h 127.0.0.1", "start"])

    def stop(self) -> None:
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-w", "-m", "fast", "stop"])

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A Redis server of the test's own, persisting to disk like a production one, stoppable."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        root.mkdir(parents=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.root), "--appendonly", "yes", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def assert_download_reproduces_probe(archive: bytes, checkpoint: dict, root: Path) -> None:
    """Unpack a checkpoint's download under `root`, load it with transformers, and check it gives the probe
    logits the trainer recorded (the download is the model that trained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tarfile.open(fileobj=io.BytesIO(archive)).extractall(root, filter="data")
    model = AutoModelForCausalLM.from_pretrained(root / checkpoint["id"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(root / checkpoint["id"])
    with torch.no_grad():
        ids = tokenizer(checkpoint["probe"]["text"], return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, : len(checkpoint["probe"]["logits"])]
    torch.testing.assert_close(logits, torch.tensor(checkpoint["probe"]["logits"]), rtol=0, atol=1e-5)


def poisoned_base_model(models_dir: Path) -> str:
    """Write builtin:tiny-llama with one NaN weight under the models root, so a job's first loss is NaN;
    returns its reference."""
    import torch

    from trainers.models.tiny import build_tiny_llama

    model, tokenizer = build_tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    target = models_dir / "poisoned" / "tiny"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return "poisoned/tiny"
