"""A job of several processes: its training child starts the ranks under torchrun and learns how they failed.

The training child of a job with ``processes`` N > 1 is no rank itself: it runs
`trainers.distributed.launch.torchrun_command` (``python -m worker.runner ...`` as N ranks, with
torchrun's agent dying with the child, and each rank with the agent) and waits for it, its
standard error inherited by the agent and the ranks. Rank 0 records the run's outcome when the run
ends in step (completed, cancelled, or stopped before it started); a rank that raises writes a
report instead (`report`: its outcome, or that rank 0 lost its lease) and exits non-zero, which
makes torchrun stop the others (``--max-restarts=0``). The child then records the first report's
outcome (`first_report`): the rank that failed first is the cause, and a peer's error about a
vanished rank comes later.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.lifecycle import Lease
from core.model_refs import ResolvedModel
from core.models import JobStatus
from trainers.distributed.launch import torchrun_command
from trainers.spec.config import JobConfig
from worker.outcomes import Outcome, user_failure

if TYPE_CHECKING:  # torch stays out of the worker's own process (worker.tasks imports the runner)
    from trainers.distributed.ranks import Ranks

REPORTS_ENV = "RLHF_RANK_REPORTS"  # the directory where a failing rank writes its report


@dataclass(frozen=True)
class RankReport:
    """Why a rank exited non-zero, written before it exits.

    Attributes:
        rank: the rank that wrote it.
        at: when (time.time()): the earliest report names the first failure.
        outcome: what the job records, or None when rank 0 lost its lease (the job was handed on).
    """

    rank: int
    at: float
    outcome: Outcome | None


@dataclass(frozen=True)
class Plan:
    """What every rank of a run trains on, as rank 0 decided it (and broadcast it to the others)."""

    config: JobConfig  # with the base model where rank 0 resolved it
    model: ResolvedModel  # the base model as the user wrote it, for messages
    datasets: tuple[str | None, str | None, str | None]  # train, eval, ptx
    resume_from: str | None  # the checkpoint directory rank 0 fetched from the store; the ranks share a node


class RankFailed(Exception):
    """A rank's run failed in a way it understood: `outcome` is what the job records (by the launching child)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def in_rank() -> bool:
    """Whether this process is a rank started by torchrun (which sets RANK)."""
    return "RANK" in os.environ


def rank_program(lease: Lease) -> list[str]:
    """What each rank of the job runs: this runner, under the same lease as the child."""
    return ["-m", "worker.runner", lease.job_id, lease.worker_id, str(lease.attempt)]


def device_shortfall(processes: int) -> Outcome | None:
    """A user failure when this GPU worker sees fewer CUDA devices than the job's processes; None otherwise.

    A CPU-only worker runs any number of ranks, sharing its cores (gloo).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    devices = torch.cuda.device_count()
    if processes <= devices:
        return None
    return user_failure(f"processes is {processes}, but this worker has {devices} GPU"
                        f"{'' if devices == 1 else 's'}: one process per GPU", "processes")


def run_ranks(lease: Lease, processes: int, threads: int) -> tuple[int, RankReport | None]:
    """Run the job as `processes` ranks under torchrun and wait for them.

    Args:
        lease: the job's lease, passed on to every rank.
        processes: ranks on this node.
        threads: CPU threads of each rank (OpenMP's, as torch's: the rank sets those to match).

    Returns:
        torchrun's exit status (0 when every rank exited 0; negative: killed by that signal) and the
        first report a failed rank wrote (None if none did, e.g. a rank killed by a signal).
    """
    with tempfile.TemporaryDirectory(prefix="rlhf-ranks-") as reports:
        argv, env = torchrun_command(rank_program(lease), processes=processes)
        # Standard error is inherited: the ranks' tracebacks reach the child's stderr file, whose tail
        # the worker records when no outcome was.
        env |= {REPORTS_ENV: reports, "OMP_NUM_THREADS": str(threads)}
        code = subprocess.run(argv, env=os.environ | env, stdin=subprocess.DEVNULL, check=False).returncode
        return code, first_report(reports) if code != 0 else None


def report(ranks: Ranks, outcome: Outcome | None) -> None:
    """Write this rank's report for the launching child (a no-op outside a run started by `run_ranks`).

    A rank's first report stands: one written where the failure was understood is not replaced by
    the catch-all's.
    """
    directory = os.environ.get(REPORTS_ENV)
    if directory is None:
        return
    path = os.path.join(directory, f"{ranks.rank}.json")
    if os.path.exists(path):
        return
    body = {"rank": ranks.rank, "at": time.time(), "outcome": None if outcome is None else list(outcome)}
    partial = f"{path}.partial"
    with open(partial, "w") as out:
        json.dump(body, out)
    os.replace(partial, path)  # the child never reads half a report


def first_report(directory: str) -> RankReport | None:
    """The earliest report in `directory`, or None if no rank wrote one."""
    reports = []
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as file:
                body = json.load(file)
            outcome = body["outcome"] and Outcome(JobStatus(body["outcome"][0]), *body["outcome"][1:])
            reports.append(RankReport(body["rank"], body["at"], outcome))
    return min(reports, key=lambda r: (r.at, r.rank), default=None)
