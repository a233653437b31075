"""Operations that need the model itself (scoring, merging adapters), run in a warm child process.

`ModelOps` owns one `python -m trainers serve-ops` child per API process: started on first use,
asked one request at a time over its stdin/stdout (JSON lines), restarted when it has died, and
killed when a request outlives its deadline. The API process never imports torch, a crash there
stays there, and a reward model loaded once serves every later score request from memory.
"""

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from api.errors import ApiError, InvalidRequest, ServiceUnavailable

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


class ModelOpFailed(ApiError, status_code=500, type="internal_error"):
    """The model process failed or exited during the request."""


class ModelOpTimeout(ApiError, status_code=504, type="timeout_error"):
    """The model operation outlived its deadline; its process was restarted."""


class ModelOps:
    """The model process of this API process; thread-safe, one request at a time."""

    def __init__(self, *, cache_bytes: int, idle_seconds: float) -> None:
        self.cache_bytes, self.idle_seconds = cache_bytes, idle_seconds
        self.starts = 0  # processes started so far
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        # The child dies with the thread that started it (PR_SET_PDEATHSIG), so start it from a
        # thread that lives as long as this object, never from a request thread that may retire.
        self._spawner: ThreadPoolExecutor | None = None

    @property
    def pid(self) -> int | None:
        """The running process's id; None before the first request or after it died."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def call(self, request: dict[str, Any], *, timeout: float, param: str | None = None) -> Any:
        """Send `request`, return its result; the process is killed if no answer comes within `timeout`."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise ServiceUnavailable(f"the model process stayed busy for {timeout:.0f} s; retry later",
                                     headers={"Retry-After": "5"})
        try:
            proc = self._running()
            try:
                self._write(proc, (json.dumps(request) + "\n").encode(), deadline)
                answer = json.loads(self._read_line(proc, deadline))
            except TimeoutError as exc:
                self._kill(proc)
                raise ModelOpTimeout(f"the model operation took longer than {timeout:g} s; "
                                     "its process was restarted") from exc
            except (BrokenPipeError, EOFError) as exc:
                code = self._kill(proc)
                raise ModelOpFailed(f"the model process exited during the request (exit status {code})") from exc
        finally:
            self._lock.release()
        if answer.get("ok"):
            return answer.get("result")
        if answer.get("error") == "user_error":
            raise InvalidRequest(answer.get("message", "invalid request"), param=param)
        log.error("model operation %s failed: %s", request.get("op"), answer.get("message"))
        raise ModelOpFailed(f"the model operation failed: {answer.get('message')}")

    def close(self) -> None:
        """End the process: stdin closed, then killed if it has not exited within a grace period."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                proc.stdin.close()  # the process's signal to finish
                try:
                    proc.wait(SHUTDOWN_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                self._kill(proc)  # kills it if it is still there; closes the pipes
            if self._spawner is not None:
                self._spawner.shutdown(wait=False)
                self._spawner = None

    def _running(self) -> subprocess.Popen:
        """The live process, started when there is none (first use, or the last one died)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:
            log.warning("the model process %d had exited (status %s); starting another",
                        self._proc.pid, self._proc.returncode)
            self._kill(self._proc)
        args = [sys.executable, "-m", "trainers", "serve-ops", "--cache-bytes", str(self.cache_bytes),
                "--idle-seconds", str(self.idle_seconds), "--parent-pid", str(os.getpid())]
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix="model-ops")
        self._proc = self._spawner.submit(subprocess.Popen, args, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, bufsize=0).result()
        os.set_blocking(self._proc.stdin.fileno(), False)  # writes honour the deadline too
        self._buffer = b""
        self.starts += 1
        return self._proc

    def _write(self, proc: subprocess.Popen, data: bytes, deadline: float) -> None:
        fd = proc.stdin.fileno()
        while data:
            if not select.select([], [fd], [], _remaining(deadline))[1]:
                raise TimeoutError
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue

    def _read_line(self, proc: subprocess.Popen, deadline: float) -> bytes:
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if not select.select([fd], [], [], _remaining(deadline))[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _kill(self, proc: subprocess.Popen) -> int | None:
        """Kill `proc` if it still runs, reap it, and forget it; return its exit status."""
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()
        if self._proc is proc:
            self._proc, self._buffer = None, b""
        return code


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def score(ops: ModelOps, model_dir: Path, items: list[dict[str, Any]], *, timeout: float) -> list[dict[str, float]]:
    """Scores of `items` under the reward model in `model_dir`."""
    return ops.call({"op": "score", "model_dir": str(model_dir), "items": items}, timeout=timeout)


def merge(ops: ModelOps, model_dir: Path, out_dir: Path, *, timeout: float) -> None:
    """Write base + adapter of `model_dir` as one full model into `out_dir`."""
    ops.call({"op": "merge", "model_dir": str(model_dir), "output": str(out_dir)}, timeout=timeout)


def stats(ops: ModelOps, *, timeout: float) -> dict[str, Any]:
    """The process's own account: its pid, models loaded so far, and what its cache holds."""
    return ops.call({"op": "stats"}, timeout=timeout)
