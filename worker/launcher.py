"""Training processes, forked from a warm fork server instead of started as fresh interpreters.

Importing torch, transformers, peft and the trainers takes seconds; a fresh ``python -m
worker.runner`` per job paid for it before every first step. Each worker process instead starts
Python's own `multiprocessing` fork server once (`start_server`, when the pool process starts),
which imports that stack (`PRELOAD`) in the background and then forks one child per job
(`TrainingProcess`). The server only imports: it never initialises CUDA or runs a kernel, so each
child starts with CUDA, OpenMP and thread pools untouched.

Lifetimes (Linux): a child is killed by the kernel when its server dies (PR_SET_PDEATHSIG, and it
exits at once if the server is already gone), and the server exits when the worker process that
started it dies (the stdlib server stops when the last holder of its "alive" pipe is gone, and a
child drops its copy). Celery's pool processes die with the worker's main process, so a SIGKILL of
the worker, or of its main process alone, takes the training child down.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from multiprocessing import forkserver
from multiprocessing.process import AuthenticationString
from types import TracebackType

from trainers import TRAINERS

PR_SET_PDEATHSIG = 1
# What a training child imports, loaded once by the server: this module (see `_IMPORTED_BY`),
# torch, the trainer of every job type with the transformers and peft modules they pull in, and the
# reward models PPO and GRPO score with. The server skips a module that raises ImportError; the
# child then imports it itself, or reports why it cannot.
PRELOAD = ["worker.launcher", "torch", *(module for module, _ in TRAINERS.values()), "trainers.models.reward",
           "worker.runner"]  # fmt: skip
# Set when the server imports this module (PRELOAD's first entry); a child forked from the server
# inherits it, so in a child it is the server's pid: the parent it must not outlive.
_IMPORTED_BY = os.getpid()


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_server() -> None:
    """Start this process's fork server; it imports the training stack while the worker waits for jobs."""
    # Small models on a shared CPU: OpenMP threads that spin while waiting for a descheduled peer
    # make each tiny kernel take a scheduler slice. Set before the server loads torch's OpenMP
    # runtime, which reads it once; an operator's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # In Celery's pool processes, multiprocessing's current process is billiard's: daemonic
    # (multiprocessing refuses children to a daemonic process lest they outlive it; a training
    # child never does, see above) and with an authentication key only billiard may pickle. The
    # same key, as multiprocessing's type, lets multiprocessing hand it to the child. It goes into
    # the process's config directly: the process object is billiard's, and its public `authkey`
    # setter would wrap the key in billiard's type again.
    current = multiprocessing.current_process()
    if current.daemon:
        current.daemon = False
    if type(current.authkey) is not AuthenticationString:
        current._config["authkey"] = AuthenticationString(current.authkey)
    _context()
    forkserver.ensure_running()


def _die_with_server() -> None:
    """In the child: be killed when the fork server dies, and leave now if it already has."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if _IMPORTED_BY != os.getpid() and os.getppid() != _IMPORTED_BY:
        os._exit(128 + signal.SIGKILL)  # orphaned before the death signal was armed
    # The stdlib hands every child a copy of the server's "alive" pipe, which keeps the server
    # running as long as any copy is open; a training child must not keep it alive once the
    # worker process that owns the server is gone. The stdlib keeps that descriptor on its private
    # server object and offers no public call to close it.
    if forkserver._forkserver._forkserver_alive_fd is not None:
        os.close(forkserver._forkserver._forkserver_alive_fd)
        forkserver._forkserver._forkserver_alive_fd = None


def _child_main(argv: list[str], stderr_path: str) -> None:
    """The forked child: tie its life to the server, send fd 2 to the parent's file, run the job."""
    _die_with_server()
    # Everything inherited from the server is long-lived: out of the collector's reach, a
    # collection never writes to (and so copies) the server's pages, which cost ~0.5 s per job.
    gc.freeze()
    with open(stderr_path, "ab") as stderr:
        os.dup2(stderr.fileno(), 2)
    from worker.runner import main

    sys.exit(main(argv))


class TrainingProcess:
    """A child running ``worker.runner.main(argv)``, forked by this process's fork server.

    Its standard error goes to a temporary file that `stderr_tail` reads; a context manager,
    whose exit removes the file (the child has ended by then, or is left to its death signal).
    """

    def __init__(self, argv: list[str]) -> None:
        start_server()
        self._stderr = tempfile.NamedTemporaryFile(prefix="rlhf-training-", suffix=".stderr")
        # Not daemonic: a daemonic process may not start processes of its own (e.g. torchrun).
        self.process = _context().Process(target=_child_main, args=(list(argv), self._stderr.name),
                                          name=f"training {argv[1] if len(argv) > 1 else ''}", daemon=False)
        self._start_error: BaseException | None = None
        # `start` returns once the server has forked the child; just after a worker starts, that
        # waits for the server's imports (seconds), and the caller must go on renewing its lease.
        self._starter = threading.Thread(target=self._start, name="training-process-start", daemon=True)
        self._starter.start()

    def _start(self) -> None:
        try:
            self.process.start()
        except BaseException as exc:  # re-raised by `wait`, in the caller's thread
            self._start_error = exc

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or None if it still runs after `timeout` s."""
        deadline = time.monotonic() + timeout
        self._starter.join(timeout)
        if self._starter.is_alive():
            return None
        if self._start_error is not None:
            raise self._start_error
        self.process.join(max(0.0, deadline - time.monotonic()))
        return self.process.exitcode

    def stderr_tail(self, chars: int) -> str:
        """The last `chars` characters the child wrote to its standard error."""
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 4 * chars))
        return self._stderr.read().decode(errors="replace")[-chars:]

    def __enter__(self) -> TrainingProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stderr.close()
