"""A long-lived process that scores and merges on request: ``python -m trainers serve-ops``.

Protocol: one JSON object per line on stdin, one answer per line on stdout, in order.

- ``{"op": "score", "model_dir": DIR, "items": [...]}`` → ``{"ok": true, "result": [{"score", "normalized"}]}``
- ``{"op": "merge", "model_dir": DIR, "output": DIR}`` → ``{"ok": true, "result": null}``
- ``{"op": "stats"}`` → ``{"ok": true, "result": {"pid", "loads", "cached", "cached_bytes", "cache_bytes"}}``
- a failure → ``{"ok": false, "error": "user_error" | "internal_error", "message": str, "param": str | null}``

Loaded reward models stay in a least-recently-used cache bounded by `cache_bytes` (weights and
buffers), so repeated scoring with one checkpoint pays for the load once; models unused for
`idle_seconds` are dropped. The process ends when stdin closes (its parent is gone or done).
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import select
import signal
import sys
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from trainers.spec.errors import UserError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


class ScorerCache:
    """Reward models by directory, least recently used first, within a byte budget.

    The model just used is kept even when it alone exceeds the budget: the next call with it is
    the likeliest one.
    """

    def __init__(self, cache_bytes: int):
        self.cache_bytes = cache_bytes
        self.loads = 0
        self._entries: OrderedDict[str, Any] = OrderedDict()  # key → RewardScorer

    def get(self, model_dir: str) -> Any:
        from trainers.models.scoring import load_scorer

        key = str(Path(model_dir).resolve())
        scorer = self._entries.pop(key, None)
        if scorer is None or not Path(key).is_dir():  # a deleted directory is not served from memory
            scorer = load_scorer(Path(key))
            self.loads += 1
        self._entries[key] = scorer
        while len(self._entries) > 1 and self.total_bytes() > self.cache_bytes:
            self._entries.popitem(last=False)
        return scorer

    def total_bytes(self) -> int:
        return sum(s.weight_bytes for s in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        gc.collect()

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "loads": self.loads, "cached_bytes": self.total_bytes(),
                "cache_bytes": self.cache_bytes, "cached": list(self._entries)}  # fmt: skip


def handle(request: dict[str, Any], cache: ScorerCache) -> Any:
    """Run one request and return its result; UserError for bad input."""
    op = request.get("op")
    if op == "score":
        from trainers.models.scoring import score_with
        from trainers.spec.score_items import score_rows

        score_rows(request.get("items"))  # malformed items fail before the model loads
        return score_with(cache.get(_path(request, "model_dir")), request["items"])
    if op == "merge":
        from trainers.models.export import merge_checkpoint

        merge_checkpoint(Path(_path(request, "model_dir")), Path(_path(request, "output")))
        return None
    if op == "stats":
        return cache.stats()
    raise UserError(f"unknown op {op!r}; expected score, merge or stats", param="op")


def serve(*, cache_bytes: int, idle_seconds: float, parent_pid: int | None = None,
          stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
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
    stdin = stdin or sys.stdin
    cache = ScorerCache(cache_bytes)
    while True:
        if not _readable(stdin, idle_seconds):
            cache.clear()  # idle: give the memory back, keep the process warm
            continue
        line = stdin.readline()
        if not line:
            return 0
        stdout.write(json.dumps(_answer(line, cache)) + "\n")
        stdout.flush()


def _answer(line: str, cache: ScorerCache) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise UserError("a request must be a JSON object")
        return {"ok": True, "result": handle(request, cache)}
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": "user_error", "message": f"invalid JSON request ({exc.msg})", "param": None}
    except UserError as exc:
        return {"ok": False, "error": "user_error", "message": exc.message, "param": exc.param}
    except Exception as exc:  # noqa: BLE001 - the process outlives one failed request
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None}


def _path(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise UserError(f"{key}: expected a directory path", param=key)
    return value


def _readable(stream: IO[str], timeout: float) -> bool:
    """Whether `stream` has input within `timeout` seconds (streams without a descriptor always do)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    return bool(select.select([fd], [], [], timeout)[0])


def _die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(0)
