"""``python -m trainers dpo --processes N`` (and ``--nodes``): torchrun started by the CLI, results equal to one
process's, faults that leave no process behind, and Ctrl-C that stops with a checkpoint.

Each torchrun launch costs 10–20 s on a 2-core machine: the uninterrupted runs are made once per module
(`straight`) and shared by the tests that compare against them.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.trainers.trainer_fixtures import ROOT, write_jsonl
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = pytest.mark.trains

# 16 pairs in batches of 4 (4 steps an epoch), so 30 steps cross several epochs; long enough to be
# interrupted while it runs, short enough to run four times.
STEPS = 30
JOB = ["--base-model", "builtin:tiny-llama", "--max-steps", STEPS, "--batch-size", 4, "--learning-rate", 1e-3,
       "--seed", 3]  # fmt: skip
LAUNCH_TIMEOUT = 240


def start(tmp: Path, name: str, *args) -> tuple[subprocess.Popen, Path, Path]:
    """``python -m trainers dpo ARGS`` in the background; returns it and the files its stdout and stderr go to."""
    stdout, stderr = tmp / f"{name}.out", tmp / f"{name}.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "trainers", "dpo", *map(str, args)], cwd=ROOT, stdout=out,
                                stderr=err, env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    return proc, stdout, stderr


def finish(proc: subprocess.Popen, stdout: Path, stderr: Path) -> dict:
    """Wait for a run; its exit status, metrics by step and stderr."""
    status = proc.wait(timeout=LAUNCH_TIMEOUT)
    return {"status": status, "metrics": metrics_of(stdout.read_text()), "stderr": stderr.read_text()}


def metrics_of(text: str) -> dict[int, dict[str, float]]:
    """The JSON metrics lines of a run's stdout, by step."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {line.pop("step"): line for line in lines}


def losses(metrics: dict[int, dict[str, float]], first: int = 1) -> dict[int, float]:
    return {step: m["train/loss"] for step, m in metrics.items() if step >= first}


def wait_for(condition, timeout: float = LAUNCH_TIMEOUT, every: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(every)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def rank_pids(cli_pid: int, processes: int) -> tuple[int, dict[int, int]]:
    """The torchrun agent under the CLI process, and its ranks by RANK, once they have all started."""
    wait_for(lambda: bool(children(cli_pid)), timeout=60)
    (agent,) = children(cli_pid)
    ranks: dict[int, int] = {}

    def started() -> bool:
        for pid in children(agent):
            try:
                env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
            except OSError:
                continue
            if "RANK" in env:
                ranks[int(env["RANK"])] = pid
        return len(ranks) == processes

    wait_for(started, timeout=60)
    return agent, ranks


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same DPO job run through on 1 and on 2 processes: ``{"data": rows file, 1: run, 2: run}``."""
    tmp = tmp_path_factory.mktemp("straight")
    data = write_jsonl(tmp / "rows.jsonl", uppercase_preference_rows(16, seed=4))
    one = finish(*start(tmp, "one", "--data", data, "--output", tmp / "one", *JOB))
    two = finish(*start(tmp, "two", "--data", data, "--output", tmp / "two", *JOB, "--processes", 2))
    return {"data": data, 1: one, 2: two, "tmp": tmp}


def test_two_processes_print_the_losses_of_one(straight):
    one, two = straight[1], straight[2]
    assert one["status"] == 0, one["stderr"][-3000:]
    assert two["status"] == 0, two["stderr"][-3000:]
    assert sorted(two["metrics"]) == list(range(1, STEPS + 1))
    for step, loss in losses(one["metrics"]).items():
        assert two["metrics"][step]["train/loss"] == pytest.approx(loss, rel=1e-4), f"step {step}"
    assert two["metrics"][STEPS] == pytest.approx(one["metrics"][STEPS], rel=1e-4, abs=1e-6)
    # rank 0 alone reports: each event and the final line once, a checkpoint at the end
    assert two["stderr"].count("[info] completed at step 30") == 1
    assert two["stderr"].count("[info] 2 processes, strategy ddp") == 1
    assert (straight["tmp"] / "two" / f"checkpoint-{STEPS}" / "model" / "model.safetensors").is_file()


def test_two_nodes_of_one_process_equal_one_node_of_two(straight, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [start(tmp_path, f"node{r}", "--data", straight["data"], "--output", tmp_path / f"node{r}", *JOB,
                   "--nodes", 2, "--node-rank", r, "--rdzv-endpoint", f"127.0.0.1:{port}") for r in (0, 1)]  # fmt: skip
    runs = [finish(*node) for node in nodes]

    assert [r["status"] for r in runs] == [0, 0], runs[0]["stderr"][-3000:] + runs[1]["stderr"][-3000:]
    # one node holds rank 0 (torchrun's rendezvous decides which): it alone prints metrics and checkpoints
    reporting = [r for r in runs if r["metrics"]]
    assert len(reporting) == 1
    assert losses(reporting[0]["metrics"]) == pytest.approx(losses(straight[2]["metrics"]), rel=1e-4)
    saved = [tmp_path / f"node{r}" / f"checkpoint-{STEPS}" for r in (0, 1)]
    assert [s.is_dir() for s in saved] == [bool(r["metrics"]) for r in runs]


def test_a_killed_rank_ends_the_run_and_it_resumes_from_its_last_checkpoint(straight, tmp_path):
    out = tmp_path / "run"
    proc, stdout, stderr = start(tmp_path, "run", "--data", straight["data"], "--output", out, *JOB,
                                 "--processes", 2, "--checkpoint-every", 2)  # fmt: skip
    agent, ranks = rank_pids(proc.pid, 2)
    wait_for(lambda: f"saved checkpoint {out / 'checkpoint-2'}" in stderr.read_text())
    os.kill(ranks[1], signal.SIGKILL)

    status = proc.wait(timeout=60)
    assert status != 0
    assert not metrics_of(stdout.read_text()).get(STEPS)  # it did not run to the end
    wait_for(lambda: not any(alive(pid) for pid in [agent, *ranks.values()]), timeout=10)

    resumed = finish(*start(tmp_path, "resumed", "--data", straight["data"], "--output", tmp_path / "resumed", *JOB,
                            "--processes", 2, "--resume-from", out / "checkpoint-2"))  # fmt: skip
    assert resumed["status"] == 0, resumed["stderr"][-3000:]
    assert sorted(resumed["metrics"]) == list(range(3, STEPS + 1))
    assert losses(resumed["metrics"]) == pytest.approx(losses(straight[2]["metrics"], first=3), rel=1e-4)


def test_a_killed_cli_takes_torchrun_and_its_ranks_with_it(straight, tmp_path):
    proc, stdout, _ = start(tmp_path, "run", "--data", straight["data"], "--output", tmp_path / "run", *JOB,
                            "--max-steps", 10_000, "--processes", 2)  # fmt: skip
    agent, ranks = rank_pids(proc.pid, 2)
    wait_for(lambda: bool(metrics_of(stdout.read_text())))  # training, past the set-up
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in [agent, *ranks.values()]), timeout=10)


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_stops_after_the_current_step_with_a_checkpoint(straight, tmp_path, processes):
    out = tmp_path / "run"
    proc, stdout, stderr = start(tmp_path, "run", "--data", straight["data"], "--output", out, *JOB,
                                 "--max-steps", 10_000, "--processes", processes)  # fmt: skip
    wait_for(lambda: len(metrics_of(stdout.read_text())) >= 2)
    proc.send_signal(signal.SIGINT)

    run = finish(proc, stdout, stderr)
    assert run["status"] == 0, run["stderr"][-3000:]
    last = max(run["metrics"])
    assert 2 <= last < 10_000 and sorted(run["metrics"]) == list(range(1, last + 1))
    assert f"[info] stopped at step {last}" in run["stderr"]
    assert [p.name for p in out.iterdir()] == [f"checkpoint-{last}"]
    assert (out / f"checkpoint-{last}" / "trainer_state.pt").is_file()


def test_bad_input_exits_2_before_any_rank_starts(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p"}])
    bad_rows = finish(*start(tmp_path, "rows", "--data", data, "--output", tmp_path / "run", *JOB, "--processes", 2))
    assert bad_rows["status"] == 2 and "line 2" in bad_rows["stderr"] and "torch" not in bad_rows["stderr"]

    good = write_jsonl(tmp_path / "good.jsonl", uppercase_preference_rows(4))
    bad_setting = finish(*start(tmp_path, "setting", "--data", good, "--output", tmp_path / "run", *JOB,
                                "--processes", 2, "--max-prompt-length", 4096))  # fmt: skip
    assert bad_setting["status"] == 2 and "max_prompt_length" in bad_setting["stderr"]

    no_endpoint = finish(*start(tmp_path, "nodes", "--data", good, "--output", tmp_path / "run", *JOB, "--nodes", 2))
    assert no_endpoint["status"] == 2 and "--rdzv-endpoint" in no_endpoint["stderr"]
    assert not (tmp_path / "run").exists()
