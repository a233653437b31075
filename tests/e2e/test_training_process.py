"""The training process of a job, seen from outside: it dies with its worker, and its last words on
standard error reach the job's error when it crashes."""

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.crashing_reward import LAST_WORDS
from tests.e2e.e2e_support import create_dataset, deployment, wait_for
from tests.support import jsonl

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent


@pytest.fixture
def dep(request, tmp_path):
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    with deployment(request, tmp_path, backend="embedded", PYTHONPATH=path,
                    REWARD_FUNCTION_MODULES='["crashing_reward"]') as dep:
        yield dep


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running, or stopped: anything but gone or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_sigkill_of_the_worker_main_process_alone_ends_the_training_process(dep):
    client = dep.client
    job_id = client.post("/v1/jobs", json={
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": create_dataset(client),
        "hyperparameters": {"max_steps": 100000, "checkpoint_every": 100000}}).json()["id"]
    wait_for(client, job_id, lambda j: j["current_step"] >= 2, "step 2")
    worker = dep.procs.pop("worker")
    tree = descendants(worker.pid)
    assert len(tree) >= 2  # the pool process and, below it, the training process

    os.kill(worker.pid, signal.SIGKILL)  # the main process only, not its process group
    worker.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in tree if alive(pid)] == []
    step = client.get(f"/v1/jobs/{job_id}").json()["current_step"]
    time.sleep(2)  # nothing trains the job any more: its step stays where it is
    assert client.get(f"/v1/jobs/{job_id}").json()["current_step"] == step


def test_a_crashed_training_process_leaves_its_last_words_in_the_job_error(dep):
    client = dep.client
    r = client.post("/v1/datasets", data={"kind": "prompt"},
                    files={"file": ("prompts.jsonl", jsonl([{"prompt": "Hello"}, {"prompt": "Write"}]))})
    assert r.status_code == 201, r.text
    job_id = client.post("/v1/jobs", json={
        "type": "grpo", "base_model": "builtin:tiny-llama", "dataset_id": r.json()["id"],
        "reward": {"type": "function", "name": "crash", "function": "test.crash"},
        "hyperparameters": {"max_steps": 1, "rollout_batch_size": 2, "num_generations": 2, "batch_size": 4,
                            "max_new_tokens": 4, "max_prompt_length": 16, "max_length": 32}}).json()["id"]
    job = wait_for(client, job_id, lambda j: j["status"] not in ("queued", "running"), "its end")
    assert job["status"] == "failed"
    assert job["error"]["type"] == "internal_error"
    message = job["error"]["message"]
    assert message.startswith(f"the training process exited with code {-signal.SIGABRT}")
    assert message.endswith(LAST_WORDS)
