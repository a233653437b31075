"""The `rlhf` command against a live API and worker: the README's flow (upload, create from flags, watch,
download), and `jobs watch`'s exit status for a job that fails, one that is cancelled and one that is paused."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.e2e_support import DEADLINE
from tests.support import jsonl
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = pytest.mark.e2e
RLHF = str(Path(sys.executable).with_name("rlhf"))  # the installed script (pip install -e .)


def run(service, cwd: Path, *args: str, module: bool = False) -> subprocess.CompletedProcess:
    """Run `rlhf ARGS` (or `python -m client ARGS`) as a user would, configured by the environment only."""
    env = os.environ | {"RLHF_BASE_URL": str(service.base_url),
                        "RLHF_API_KEY": service.headers["Authorization"].removeprefix("Bearer "),
                        "COLUMNS": "200"}
    command = [sys.executable, "-m", "client"] if module else [RLHF]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=DEADLINE)


def ok(proc: subprocess.CompletedProcess, code: int = 0) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_the_cli_flow_uploads_trains_watches_and_downloads(embedded_service, tmp_path):
    (tmp_path / "pairs.jsonl").write_bytes(jsonl(uppercase_preference_rows(32, seed=1)))
    dataset = json.loads(ok(run(embedded_service, tmp_path, "datasets", "upload", "pairs.jsonl", "--kind",
                                "preference", "--name", "uppercase", "--json")))
    assert dataset["row_count"] == 32 and dataset["kind"] == "preference"
    assert dataset["id"] in ok(run(embedded_service, tmp_path, "datasets", "list"))

    job = json.loads(ok(run(embedded_service, tmp_path, "jobs", "create", "dpo", "--base-model", "builtin:tiny-llama",
                            "--dataset-id", dataset["id"], "--beta", "0.2", "--learning-rate", "3e-3",
                            "--max-steps", "4", "--checkpoint-every", "2", "--json", module=True)))
    assert job["hyperparameters"]["beta"] == 0.2 and job["hyperparameters"]["max_steps"] == 4

    watched = ok(run(embedded_service, tmp_path, "jobs", "watch", job["id"]))
    assert f"{job['id']} succeeded at step 4/4  loss " in watched
    assert watched.count("checkpoint ckpt_") == 2  # steps 2 and 4, printed as they arrived
    assert job["id"] in ok(run(embedded_service, tmp_path, "jobs", "list", "--status", "succeeded"))

    checkpoints = json.loads(ok(run(embedded_service, tmp_path, "checkpoints", "list", job["id"], "--json")))["data"]
    final = checkpoints[-1]
    assert [c["step"] for c in checkpoints] == [2, 4] and final["is_final"]
    out = ok(run(embedded_service, tmp_path, "checkpoints", "download", final["id"], "-o", "model.tar"))
    assert f"sha256 {final['sha256']} OK" in out
    archive = tmp_path / "model.tar"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == final["sha256"]
    with tarfile.open(archive) as tar:
        assert f"{final['id']}/config.json" in tar.getnames()


def test_watch_exits_1_for_a_failed_job_2_cancelled_3_paused(embedded_service, tmp_path):
    dataset_id = embedded_service.post("/v1/datasets", data={"kind": "preference"}, files={
        "file": ("pairs.jsonl", jsonl(uppercase_preference_rows(16, seed=2)))}).json()["id"]

    def create(*flags: str) -> str:
        return json.loads(ok(run(embedded_service, tmp_path, "jobs", "create", "dpo", "--dataset-id", dataset_id,
                                 "--json", *flags)))["id"]

    # The spec is valid, but no such model exists where the worker looks (the hub is offline).
    failing = create("--base-model", "nobody/no-such-model")
    proc = run(embedded_service, tmp_path, "jobs", "watch", failing)
    assert "error (user_error) (base_model):" in ok(proc, 1) and "nobody/no-such-model" in proc.stdout

    long = ("--base-model", "builtin:tiny-llama", "--max-steps", "100000", "--checkpoint-every", "100000")
    paused = create(*long)
    assert ok(run(embedded_service, tmp_path, "jobs", "pause", paused)).startswith(paused)
    assert "resume it with: rlhf jobs resume" in ok(run(embedded_service, tmp_path, "jobs", "watch", paused), 3)
    ok(run(embedded_service, tmp_path, "jobs", "cancel", paused))
    assert f"{paused} cancelled" in ok(run(embedded_service, tmp_path, "jobs", "watch", paused), 2)
