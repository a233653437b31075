"""Operations that need the model itself (scoring, generating, merging adapters), run in a warm child process.

`ModelOps` owns one `python -m trainers serve-ops` child per API process: started on first use,
asked one request at a time over its stdin/stdout (JSON lines), restarted when it has died, and
killed when a request outlives its deadline. The API process never imports torch, a crash there
stays there, and a model loaded once serves every later request from memory.

A streaming request (`ModelOps.stream`) holds the process until its final line: a thread of its own
reads the lines into a queue, so the process is released on time even when whoever iterates the
chunks stops early, or never resumes; stopping early also sends a cancel line, so the generation
ends at its next token instead of running to its end.
"""

import json
import logging
import math
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from api.errors import ApiError, InvalidRequest, ServiceUnavailable

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0
CANCEL_LINE = b'{"op": "cancel"}\n'


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
        self._flow: _Flow | None = None  # the stream in flight, if any
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
        return _outcome(request, answer, param)

    def stream(self, request: dict[str, Any], *, timeout: float, param: str | None = None) -> Iterator[dict[str, Any]]:
        """Send a streaming `request`; yield the `chunk` of each line before the answer, then ``{"result": ...}``.

        Busy, dead or unwritable processes raise here; a failed answer raises from the iterator.
        The process stays this request's until its answer line or `timeout`, whatever the iterator's
        consumer does; closing the iterator early asks the process to stop generating.
        """
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise ServiceUnavailable(f"the model process stayed busy for {timeout:.0f} s; retry later",
                                     headers={"Retry-After": "5"})
        try:
            proc = self._running()
            self._send(proc, request, deadline, timeout)
        except BaseException:
            self._lock.release()
            raise
        lines: queue.SimpleQueue = queue.SimpleQueue()
        flow = self._flow = _Flow(proc)
        threading.Thread(target=self._pump, args=(proc, deadline, timeout, lines, flow), daemon=True,
                         name="model-ops-stream").start()
        return self._relay(request, lines, flow, param)

    def _send(self, proc: subprocess.Popen, request: dict[str, Any], deadline: float, timeout: float) -> None:
        try:
            self._write(proc, (json.dumps(request) + "\n").encode(), deadline)
        except TimeoutError as exc:
            self._kill(proc)
            raise ModelOpTimeout(f"the model process took no request for {timeout:g} s; it was restarted") from exc
        except BrokenPipeError as exc:
            code = self._kill(proc)
            raise ModelOpFailed(f"the model process exited during the request (exit status {code})") from exc

    def _pump(self, proc: subprocess.Popen, deadline: float, timeout: float, lines: queue.SimpleQueue,
              flow: "_Flow") -> None:
        """Read a stream's lines into `lines` until its answer (or failure); then free the process."""
        try:
            while True:
                try:
                    message = json.loads(self._read_line(proc, deadline))
                except TimeoutError:
                    self._kill(proc)
                    lines.put(("error", ModelOpTimeout(f"the model operation took longer than {timeout:g} s; "
                                                       "its process was restarted")))
                    return
                except (EOFError, ValueError, OSError) as exc:
                    code = self._kill(proc)
                    lines.put(("error", ModelOpFailed(f"the model process failed during the request ({exc!r}, "
                                                      f"exit status {code})")))
                    return
                if "chunk" in message:
                    lines.put(("chunk", message["chunk"]))
                else:
                    lines.put(("answer", message))
                    return
        finally:
            with flow.lock:
                flow.done = True
            self._flow = None
            self._lock.release()

    def _relay(self, request: dict[str, Any], lines: queue.SimpleQueue, flow: "_Flow",
               param: str | None) -> Iterator[dict[str, Any]]:
        answered = False
        try:
            while True:
                kind, value = lines.get()
                if kind == "chunk":
                    yield value
                elif kind == "error":
                    answered = True
                    raise value
                else:
                    answered = True
                    yield {"result": _outcome(request, value, param)}
                    return
        finally:
            if not answered:
                flow.cancel()

    def close(self) -> None:
        """End the process: stdin closed, then killed if it has not exited within a grace period."""
        flow = self._flow
        if flow is not None:
            flow.cancel()  # a stream in flight ends at its next token, instead of holding the process to its end
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
            if not _ready(fd, select.POLLOUT, _remaining(deadline)):
                raise TimeoutError
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue

    def _read_line(self, proc: subprocess.Popen, deadline: float) -> bytes:
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if not _ready(fd, select.POLLIN, _remaining(deadline)):
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


class _Flow:
    """A stream in flight: whether its answer has come, and the way to ask the process to stop it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.done, self.lock = proc, False, threading.Lock()

    def cancel(self) -> None:
        """Ask the process to end the generation (only while this stream still holds it)."""
        with self.lock:
            if self.done:
                return
            try:
                os.write(self.proc.stdin.fileno(), CANCEL_LINE)  # a short line: the pipe takes it at once
            except (OSError, ValueError):
                pass  # the process is gone or its pipe full: the deadline still ends the request


def _outcome(request: dict[str, Any], answer: dict[str, Any], param: str | None) -> Any:
    """The result of an answer line, or the error it reports, about `param`.

    A generate request's fields are named as the chat request's, so there the process's own `param`
    is passed on when the caller names none; other ops name files of this server, never shown.
    """
    if answer.get("ok"):
        return answer.get("result")
    if answer.get("error") == "user_error":
        if param is None and request.get("op") == "generate":
            param = answer.get("param")
        raise InvalidRequest(answer.get("message", "invalid request"), param=param)
    log.error("model operation %s failed: %s", request.get("op"), answer.get("message"))
    raise ModelOpFailed(f"the model operation failed: {answer.get('message')}")


def _ready(fd: int, event: int, timeout: float) -> bool:
    """Whether `fd` is ready for `event` (or hung up) within `timeout` seconds. poll, not select:
    select refuses descriptors past 1024, which an API process holding many connections reaches."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(math.ceil(timeout * 1000)))


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


def generate(ops: ModelOps, model: str, params: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Chat completions of `params` (`trainers.spec.generation.GenerationRequest`) by the causal LM `model`."""
    return ops.call({"op": "generate", "model": model, **params}, timeout=timeout)


def generate_stream(ops: ModelOps, model: str, params: dict[str, Any], *, timeout: float) -> Iterator[dict[str, Any]]:
    """As `generate`, streamed: ``{"index", "text"}`` deltas as the completions grow, then ``{"result": ...}``."""
    return ops.stream({"op": "generate", "model": model, "stream": True, **params}, timeout=timeout)
