"""Jobs of several processes through the service: the worker runs them under torchrun, on the CPU with gloo.

A 2-process DPO job trains as the same job on one process does (both deployments), and its
checkpoint loads with transformers; a cancelled one ends with every rank; a SIGKILL of the worker
takes torchrun's agent and the ranks with it; two such jobs run side by side on one machine.
"""

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.e2e_support import (
    assert_download_reproduces_probe,
    create_dataset,
    deployment,
    poisoned_base_model,
    wait_for,
)

pytestmark = pytest.mark.e2e
HYPERPARAMETERS = {"learning_rate": 3e-3, "max_steps": 10, "batch_size": 8, "checkpoint_every": 5}
ENDED = ("succeeded", "failed", "cancelled")


def submit(client, dataset_id: str, processes: int, **hyperparameters) -> str:
    r = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama", "seed": 0,
                                      "dataset_id": dataset_id, "processes": processes,
                                      "hyperparameters": HYPERPARAMETERS | hyperparameters})
    assert r.status_code == 201, r.text
    assert r.json()["processes"] == processes
    return r.json()["id"]


def losses(client, job_id: str) -> dict[int, float]:
    rows = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    return {row["step"]: row["values"]["train/loss"] for row in rows}


def messages(client, job_id: str) -> list[str]:
    return [e["message"] for e in client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]]


def job_processes(job_id: str) -> dict[int, list[str]]:
    """pid -> argv of every live process whose command line names the job: torchrun's agent and the ranks.

    (The training child is forked from the worker's fork server and keeps the server's command line.)
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        if job_id in argv and state != "Z":
            found[int(entry.name)] = argv
    return found


def ranks_and_agents(job_id: str) -> tuple[list[int], list[int]]:
    processes = job_processes(job_id)
    agents = [pid for pid, argv in processes.items() if "trainers.distributed.launch" in argv]
    return [pid for pid in processes if pid not in agents], agents


def until_gone(job_id: str) -> dict[int, list[str]]:
    """The job's processes once none is left, or those still there after the deadline."""
    deadline = time.monotonic() + 30
    while (left := job_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_two_process_dpo_job_trains_as_one_process_does_and_its_checkpoint_loads(service, tmp_path):
    dataset_id = create_dataset(service)
    one, two = submit(service, dataset_id, 1), submit(service, dataset_id, 2)
    for job_id in (one, two):
        job = wait_for(service, job_id, lambda j: j["status"] in ENDED, "its end")
        assert job["status"] == "succeeded", job["error"]

    single, double = losses(service, one), losses(service, two)
    assert sorted(double) == list(range(1, 11))
    assert double == pytest.approx(single, rel=1e-4)
    assert "2 processes, strategy ddp" in messages(service, two)
    ckpts = service.get(f"/v1/jobs/{two}/checkpoints").json()["data"]
    assert [(c["step"], c["is_final"]) for c in ckpts] == [(5, False), (10, True)]

    final = ckpts[-1]
    assert_download_reproduces_probe(service.get(f"/v1/checkpoints/{final['id']}/download").content, final, tmp_path)


@pytest.fixture
def embedded(request, tmp_path):
    with deployment(request, tmp_path, backend="embedded") as dep:
        yield dep


def start_long_job(client) -> str:
    """A 2-process job that trains until it is stopped, once it has reached step 2 (its ranks are up)."""
    job_id = submit(client, create_dataset(client), 2, max_steps=100000, checkpoint_every=100000)
    wait_for(client, job_id, lambda j: j["current_step"] >= 2, "step 2")
    return job_id


def test_a_cancelled_two_process_job_ends_cancelled_with_all_its_ranks(embedded):
    client = embedded.client
    job_id = start_long_job(client)
    ranks, agents = ranks_and_agents(job_id)
    assert len(ranks) == 2 and len(agents) == 1

    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    job = wait_for(client, job_id, lambda j: j["status"] not in ("running", "cancelling"), "an end")
    assert job["status"] == "cancelled", job["error"]
    ckpts = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert len(ckpts) == 1 and ckpts[0]["step"] >= 2 and ckpts[0]["is_final"]
    assert until_gone(job_id) == {}


def test_a_sigkill_of_the_worker_main_process_ends_torchrun_and_every_rank(embedded):
    client = embedded.client
    job_id = start_long_job(client)
    ranks, agents = ranks_and_agents(job_id)
    assert len(ranks) == 2 and len(agents) == 1

    worker = embedded.procs.pop("worker")
    os.kill(worker.pid, signal.SIGKILL)  # the main process only: each process below goes with its parent
    worker.wait(timeout=30)
    assert until_gone(job_id) == {}
    step = client.get(f"/v1/jobs/{job_id}").json()["current_step"]
    time.sleep(2)  # nothing trains the job any more: its step stays where it is
    assert client.get(f"/v1/jobs/{job_id}").json()["current_step"] == step


def test_two_two_process_jobs_run_side_by_side_on_one_machine(embedded):
    client = embedded.client
    embedded.start_worker("worker2")
    dataset_id = create_dataset(client)
    jobs = [submit(client, dataset_id, 2, max_steps=8, checkpoint_every=8) for _ in range(2)]
    ends = [wait_for(client, job_id, lambda j: j["status"] in ENDED, "its end") for job_id in jobs]
    assert [job["status"] for job in ends] == ["succeeded", "succeeded"], [job["error"] for job in ends]

    first, second = (losses(client, job_id) for job_id in jobs)
    assert sorted(first) == list(range(1, 9)) and second == pytest.approx(first, rel=1e-4)
    events = [client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"] for job_id in jobs]
    starts = [next(e for e in log if e["type"] == "status" and e["data"]["status"] == "running") for log in events]
    finishes = [next(e for e in log if e["type"] == "status" and e["data"]["status"] == "succeeded") for log in events]
    assert starts[0]["message"] != starts[1]["message"]  # "started on <worker>": one job on each worker
    # each started before the other finished: their ranks trained at the same time, on free ports
    assert starts[0]["created_at"] < finishes[1]["created_at"] and starts[1]["created_at"] < finishes[0]["created_at"]


def test_a_two_process_job_whose_loss_turns_nan_fails_naming_the_step(embedded):
    """Every rank raises at step 1: the first rank's error is the job's, as on one process."""
    base = poisoned_base_model(embedded.settings.models_dir)

    client = embedded.client
    r = client.post("/v1/jobs", json={"type": "dpo", "base_model": base, "processes": 2,
                                      "dataset_id": create_dataset(client)})
    assert r.status_code == 201, r.text
    job = wait_for(client, r.json()["id"], lambda j: j["status"] in ENDED, "its end")
    assert job["status"] == "failed"
    assert job["error"]["type"] == "user_error" and "step 1" in job["error"]["message"]
    assert "non-finite" in job["error"]["message"]
    assert until_gone(job["id"]) == {}
