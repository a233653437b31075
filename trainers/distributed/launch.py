"""Starting a job's ranks with torchrun, so that no rank ever outlives whoever started the job.

`torchrun_command` builds the command line: ``python -m trainers.distributed.launch <torchrun
arguments> <program>``, which is torchrun itself (`torch.distributed.run`) after two precautions
that torchrun does not take, since it starts each rank in a session of its own, where no signal
of its starter's reaches it:

- the agent (this module's ``__main__``) is killed when the process that started it dies
  (Linux's PR_SET_PDEATHSIG), and exits at once if that process is already gone;
- it tells its ranks its pid (``RLHF_RANK_PARENT``), and each rank, when it joins the job
  (`trainers.distributed.ranks.init_ranks`), arms the same signal against the agent
  (`die_with_launcher`).

So a SIGKILL of the worker (or of the CLI) takes the agent, then every rank, down with it.
One node uses torchrun's standalone rendezvous on a free port, so concurrent jobs on a node never
collide; several nodes use a c10d rendezvous at an endpoint every node can reach.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
PARENT_ENV = "RLHF_LAUNCH_PARENT"  # the pid the agent must not outlive
RANK_PARENT_ENV = "RLHF_RANK_PARENT"  # the agent's pid, which its ranks must not outlive


def die_with(parent_pid: int) -> None:
    """Arm SIGKILL for when this process's parent dies; exit now if the parent is no longer `parent_pid`.

    Checking after arming closes the race: a parent that died before the signal was armed has
    already handed this process to another (init or a subreaper).
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGKILL)


def die_with_launcher() -> None:
    """In a rank started by this module's agent: die with the agent (a no-op in any other process)."""
    parent = os.environ.get(RANK_PARENT_ENV)
    if parent is not None:
        die_with(int(parent))


def torchrun_command(
    program: Sequence[str],
    *,
    processes: int,
    nodes: int = 1,
    node_rank: int = 0,
    rendezvous: str | None = None,
    run_id: str = "rlhf",
) -> tuple[list[str], dict[str, str]]:
    """The command that runs `program` as `processes` ranks per node, and the environment it needs.

    Args:
        program: what each rank runs, as Python arguments (e.g. ``["-m", "worker.runner", ...]``).
        processes: ranks on this node.
        nodes: nodes in the job; with more than one, `rendezvous` is required.
        node_rank: this node's index (0 to ``nodes - 1``); node 0's ranks come first.
        rendezvous: ``host:port`` of the c10d rendezvous every node reaches (node 0 hosts it);
            None on one node, which rendezvous on a free local port.
        run_id: the job's rendezvous id: the same on every node of a job.

    Returns:
        The argv to start (the agent, then torchrun's arguments, then `program`) and the environment
        entries to add to the caller's (the agent's parent pid).
    """
    if nodes > 1 and rendezvous is None:
        raise ValueError("several nodes need a rendezvous endpoint (host:port)")
    if rendezvous is None:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rendezvous}", f"--rdzv-id={run_id}"]  # fmt: skip
    # --max-restarts 0: a failed rank fails the job, which then resumes from its last checkpoint
    # through the service (or the user), never silently from a restart of torchrun's own.
    argv = [sys.executable, "-m", "trainers.distributed.launch", *where, f"--nproc-per-node={processes}",
            "--max-restarts=0", "--no-python", sys.executable, *program]  # fmt: skip
    return argv, {PARENT_ENV: str(os.getpid())}


def main(argv: Sequence[str]) -> None:
    """The agent: die with the parent named in the environment, then run torchrun with `argv`."""
    parent = os.environ.get(PARENT_ENV)
    if parent is not None:
        die_with(int(parent))
    os.environ[RANK_PARENT_ENV] = str(os.getpid())
    from torch.distributed.run import main as torchrun

    torchrun(list(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
