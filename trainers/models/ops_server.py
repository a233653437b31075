"""A long-lived process that scores, generates and merges on request: ``python -m trainers serve-ops``.

Protocol: one JSON object per line on stdin, one answer per line on stdout, in order.

- ``{"op": "score", "model_dir": DIR, "items": [...]}`` → ``{"ok": true, "result": [{"score", "normalized"}]}``
- ``{"op": "generate", "model": REF, "messages": [...], "max_tokens", "temperature", "top_p", "n", "seed",
  "stop"}`` (`trainers.spec.generation.GenerationRequest`) → ``{"ok": true, "result": {"choices": [{"index",
  "text", "finish_reason", "completion_tokens"}], "usage": {...}}}``. With ``"stream": true`` the answer is
  preceded by ``{"chunk": {"index", "text"}}`` lines as the text grows; while it streams, a
  ``{"op": "cancel"}`` line ends the generation early (the answer line still comes). A cancel line
  that arrives after its stream ended is read and left unanswered.
- ``{"op": "merge", "model_dir": DIR, "output": DIR}`` → ``{"ok": true, "result": null}``
- ``{"op": "stats"}`` → ``{"ok": true, "result": {"pid", "loads", "cached", "entries", "cached_bytes",
  "cache_bytes"}}``
- a failure → ``{"ok": false, "error": "user_error" | "internal_error", "message": str, "param": str | null}``

Loaded reward models and chat models share one least-recently-used cache bounded by `cache_bytes`
(weights and buffers), so repeated requests with one model pay for the load once; models unused for
`idle_seconds` are dropped. The process ends when stdin closes (its parent is gone or done).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from trainers.models.model_cache import ModelCache
from trainers.spec.errors import UserError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
Emit = Callable[[dict[str, Any]], None]


SCORER, CHAT_MODEL = "scorer", "chat_model"  # the kinds of model the cache holds


def handle(
    request: dict[str, Any],
    cache: ModelCache,
    *,
    emit: Emit | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Run one request and return its result; UserError for bad input.

    A streaming `generate` sends each text delta through `emit` as ``{"chunk": {"index", "text"}}``
    and ends early when `should_stop()` says so.
    """
    op = request.get("op")
    if op == "score":
        from trainers.models.scoring import load_scorer, score_with
        from trainers.spec.score_items import score_rows

        score_rows(request.get("items"))  # malformed items fail before the model loads
        key = str(Path(_path(request, "model_dir")).resolve())
        return score_with(cache.get(SCORER, key, lambda: load_scorer(Path(key))), request["items"])
    if op == "generate":
        from trainers.models.chat_generation import generate_chat, load_chat_model
        from trainers.spec.generation import parse_generation_request

        ref = _path(request, "model")
        params = parse_generation_request({k: v for k, v in request.items() if k not in ("op", "model", "stream")})
        key = str(Path(ref).resolve()) if Path(ref).is_absolute() else ref
        chat = cache.get(CHAT_MODEL, key, lambda: load_chat_model(key))
        if request.get("stream") and emit is not None:
            return generate_chat(
                chat,
                params,
                should_stop=should_stop,
                on_delta=lambda index, text: emit({"chunk": {"index": index, "text": text}}),
            )
        return generate_chat(chat, params)
    if op == "merge":
        from trainers.models.export import merge_checkpoint

        merge_checkpoint(Path(_path(request, "model_dir")), Path(_path(request, "output")))
        return None
    if op == "stats":
        return {"pid": os.getpid(), **cache.stats()}
    raise UserError(f"unknown op {op!r}; expected score, generate, merge or stats", param="op")


def serve(
    *,
    cache_bytes: int,
    idle_seconds: float,
    parent_pid: int | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Answer requests from `stdin` on `stdout` until stdin closes; return the exit status.

    Args:
        cache_bytes: most bytes of model weights kept loaded between requests.
        idle_seconds: loaded models are dropped after this long without a request.
        parent_pid: the process that started this one; this one dies with it (Linux).
        stdin: where requests come from (the process's stdin by default).
        stdout: where answers go (the process's stdout by default, which is then
            detached from `print`, so stray output cannot corrupt the protocol).
    """
    if parent_pid is not None:
        _die_with(parent_pid)
    if stdout is None:
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # print() and libraries write to stderr now
    requests = _Requests(stdin or sys.stdin)
    cache = ModelCache(cache_bytes)

    def emit(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    while True:
        if not requests.wait(idle_seconds):
            cache.clear()  # idle: give the memory back, keep the process warm
            continue
        line = requests.readline()
        if not line:
            return 0
        answer = _answer(line, cache, emit, requests.cancelled)
        if answer is not None:
            emit(answer)


def _answer(line: str, cache: ModelCache, emit: Emit, should_stop: Callable[[], bool]) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise UserError("a request must be a JSON object")
        if request.get("op") == "cancel":
            return None  # a stream's cancel that came after it ended: nothing to stop, nothing to answer
        return {"ok": True, "result": handle(request, cache, emit=emit, should_stop=should_stop)}
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": "user_error", "message": f"invalid JSON request ({exc.msg})", "param": None}
    except UserError as exc:
        return {"ok": False, "error": "user_error", "message": exc.message, "param": exc.param}
    except Exception as exc:  # noqa: BLE001 - the process outlives one failed request
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None}


class _Requests:
    """Request lines from stdin, read from its descriptor, so that a running stream can notice a
    ``{"op": "cancel"}`` line (or stdin closing) between two tokens without blocking."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None  # streams without a descriptor: plain blocking reads, no cancelling
        self.buffer = b""
        self.closed = False

    def wait(self, timeout: float) -> bool:
        """Whether a request (or the end of input) is there within `timeout` seconds."""
        if self.fd is None or b"\n" in self.buffer or self.closed:
            return True
        return _readable(self.fd, timeout)

    def readline(self) -> str:
        """The next line ('' at the end of input)."""
        if self.fd is None:
            return self.stream.readline()
        while b"\n" not in self.buffer and not self.closed:
            self._read()
        line, newline, self.buffer = self.buffer.partition(b"\n")
        return (line + newline).decode("utf-8", errors="replace")

    def cancelled(self) -> bool:
        """Whether a cancel line has come (it is consumed), or input has ended; never blocks."""
        while self.fd is not None and not self.closed and _readable(self.fd, 0):
            self._read()
        lines = self.buffer.split(b"\n")
        for i, line in enumerate(lines[:-1]):
            if _is_cancel(line):
                self.buffer = b"\n".join(lines[:i] + lines[i + 1 :])
                return True
        return self.closed

    def _read(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self.buffer += chunk
        else:
            self.closed = True


def _readable(fd: int, timeout: float) -> bool:
    """Whether `fd` has input (or hung up) within `timeout` seconds. poll, not select: select
    refuses descriptors past 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(math.ceil(timeout * 1000)))


def _is_cancel(line: bytes) -> bool:
    try:
        return json.loads(line) == {"op": "cancel"}
    except ValueError:
        return False


def _path(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise UserError(f"{key}: expected a directory path", param=key)
    return value


def _die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)
