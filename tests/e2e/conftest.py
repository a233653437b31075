"""The service as real processes: `rlhf-service api` and `rlhf-service worker` on each deployment."""

import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from support import BACKENDS, embedded_settings, new_project_key, postgres_deployments

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=BACKENDS)
def service(request, tmp_path_factory):
    """Run `rlhf-service api` and `rlhf-service worker` on one deployment; yield an HTTP client."""
    root = tmp_path_factory.mktemp(request.param)
    with ExitStack() as stack:
        if request.param == "embedded":
            settings = embedded_settings(root)
        else:
            make = stack.enter_context(postgres_deployments(request.getfixturevalue("pg_template"), root))
            settings = make()
            assert settings.database_url.startswith("postgresql") and settings.celery_broker_url.startswith("redis")
        yield from run_service(settings, root, request)


def run_service(settings, root, request):
    """Start the API and a worker on `settings` as processes; yield a client; stop them after."""
    env = os.environ | {
        "DATABASE_URL": settings.database_url, "CELERY_BROKER_URL": settings.celery_broker_url,
        "ARTIFACTS_DIR": str(settings.artifacts_dir), "MODELS_DIR": str(settings.models_dir),
        "TRAINING_QUEUE": settings.training_queue, "STREAM_POLL_SECONDS": "0.2",
        "HEARTBEAT_SECONDS": "1", "HF_HUB_OFFLINE": "1", "TORCH_THREADS": "2",
    }
    port = free_port()
    cli = [sys.executable, "-m", "core.cli"]
    logs = {name: open(root / f"{name}.log", "wb") for name in ("api", "worker")}
    procs = [
        subprocess.Popen(cli + ["api", "--port", str(port)], env=env, cwd=ROOT, stdout=logs["api"],
                         stderr=subprocess.STDOUT),
        subprocess.Popen(cli + ["worker", "--hostname", f"e2e-{port}@localhost"], env=env, cwd=ROOT,
                         stdout=logs["worker"], stderr=subprocess.STDOUT),
    ]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {new_project_key(settings)}"})
    try:
        for _ in range(120):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the API did not become ready:\n" + (root / "api.log").read_text())
        yield client
    finally:
        client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
        if request.node.session.testsfailed:
            for name in ("api", "worker"):
                print(f"--- {name} log ---\n" + (root / f"{name}.log").read_text()[-8000:])


