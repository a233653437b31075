"""The `rlhf` command against a live API and worker: the README's "Command-line client" block, run with bash as
it is written (upload, create from flags, watch, list, download), and `jobs watch`'s exit status for a job
that fails, one that is cancelled and one that is paused."""

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e.e2e_support import DEADLINE, ROOT, section_blocks
from tests.support import jsonl
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = pytest.mark.e2e
RLHF = str(Path(sys.executable).with_name("rlhf"))  # the installed script (pip install -e .)
SECTION = "## Command-line client"


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


def test_the_readme_cli_flow_runs_as_written(embedded_service, tmp_path):
    (script,) = section_blocks((ROOT / "README.md").read_text(), SECTION)
    assert "rlhf jobs watch" in script and "--quiet" in script

    # A stand-in checkout, as `scripts/serve.sh` leaves it: the venv and the key in var/api-key.
    checkout, scratch = tmp_path / "checkout", tmp_path / "tmp"
    for folder in (checkout / "var", scratch):
        folder.mkdir(parents=True)
    (checkout / ".venv").symlink_to(sys.prefix)  # the venv running this test: it has `rlhf`
    (checkout / "var" / "api-key").write_text(embedded_service.headers["Authorization"].removeprefix("Bearer "))
    (tmp_path / "flow.sh").write_text(script)
    # No key in the environment: the client reads var/api-key. The block sets RLHF_BASE_URL from BASE.
    unset = ("API_KEY", "BASE", "RLHF_API_KEY", "RLHF_BASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {
        "BASE": str(embedded_service.base_url).rstrip("/"), "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1"}
    # Strict mode: a step that fails (a `watch` that does not exit 0) stops the run where a reader would see it.
    proc = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", str(tmp_path / "flow.sh")], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=2 * DEADLINE)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    out = proc.stdout

    # `jobs watch`: the job succeeded at its last step, each checkpoint printed as it arrived.
    match = re.search(r"^(job_\S+) succeeded at step 30/30  loss ", out, re.MULTILINE)
    assert match, out[-4000:]
    job = embedded_service.get(f"/v1/jobs/{match[1]}").json()
    assert job["status"] == "succeeded" and job["hyperparameters"]["learning_rate"] == 3e-3
    checkpoints = embedded_service.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    final = checkpoints[-1]
    assert [c["step"] for c in checkpoints] == [10, 20, 30] and final["is_final"]
    assert re.findall(r"^checkpoint (ckpt_\S+) at step", out, re.MULTILINE) == [c["id"] for c in checkpoints]
    dataset = embedded_service.get(f"/v1/datasets/{job['dataset_id']}").json()
    assert (dataset["name"], dataset["kind"], dataset["row_count"]) == ("uppercase", "preference", 96)

    # `jobs list --status succeeded` lists it; `--quiet | tail -n 1` picked the final checkpoint to download.
    assert re.search(rf"^\s*{job['id']}\s+dpo\s+succeeded\s", out, re.MULTILINE), out[-4000:]
    assert re.search(rf"model\.tar\s+\S+ [KMG]?B\s+sha256 {final['sha256']} OK$", out, re.MULTILINE), out[-4000:]

    # The archive is in WORK (what mktemp -d made under TMPDIR), beside the pairs, and is the final checkpoint.
    (work,) = scratch.glob("tmp.*")
    assert sorted(p.name for p in work.iterdir()) == ["model.tar", "pairs.jsonl"]
    assert hashlib.sha256((work / "model.tar").read_bytes()).hexdigest() == final["sha256"]
    with tarfile.open(work / "model.tar") as tar:
        assert f"{final['id']}/config.json" in tar.getnames()
    assert sorted(p.name for p in checkout.iterdir()) == [".venv", "var"]

    # `python -m client` is the same command.
    listed = ok(run(embedded_service, checkout, "datasets", "list", "--quiet", module=True)).splitlines()
    assert listed[0] == dataset["id"]


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
