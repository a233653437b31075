"""Calls bounded by a deadline: a grader that overruns becomes an error for its caller, never a hang (torch-free).

`call_with_deadline` runs the call in a thread of its own and waits at most the deadline for it.
Python cannot stop a thread, so a call that overruns keeps its thread until it returns. The thread
is a daemon, so it never holds up the exit of the process, and at most `MAX_OVERDUE_CALLS` overrun
calls may still be running at a time: past that, calls are refused at once instead of starting
another thread. An RE2 match always ends (in time linear in its text), so its thread comes back;
a reward function that never returns keeps its thread for the life of the process, and the cap
bounds how many such threads there can be.

A call that holds the GIL without pause (C code that does not release it, such as Python's ``re``
on a catastrophic pattern) stalls the waiting thread too, so no deadline can end it: reward
functions must not run backtracking regular expressions on text or patterns they did not write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

MAX_OVERDUE_CALLS = 8
"""Calls that may still be running past their deadline before further calls are refused."""

_T = TypeVar("_T")
_lock = threading.Lock()
_overdue = 0  # calls whose deadline passed and that have not returned; guarded by _lock


class DeadlineExceeded(Exception):
    """The call did not return within its deadline (it may still be running in its thread)."""


class TooManyOverdue(Exception):
    """Too many earlier calls are still running past their deadline: the call was not started."""


class _Call:
    """One call's outcome, shared by the caller and the thread that runs it."""

    __slots__ = ("finished", "overdue", "value", "error", "done")

    def __init__(self) -> None:
        self.finished = False  # guarded by _lock, like `overdue`
        self.overdue = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def overdue_calls() -> int:
    """How many calls are still running past their deadline."""
    with _lock:
        return _overdue


def call_with_deadline(call: Callable[[], _T], timeout: float, *, name: str = "grader-call") -> _T:
    """Run ``call()`` in its own daemon thread and return its result, waiting at most `timeout` seconds.

    Args:
        call: the work, without arguments (bind them with `functools.partial`).
        timeout: seconds to wait, > 0.
        name: the thread's name, for stack dumps.

    Returns:
        What `call` returned.

    Raises:
        DeadlineExceeded: `call` did not return in time; its thread runs on until it does.
        TooManyOverdue: `MAX_OVERDUE_CALLS` calls are still running past their deadline; `call`
            was not started.
        Exception: whatever `call` raised, when it raised in time.
    """
    global _overdue
    with _lock:
        if _overdue >= MAX_OVERDUE_CALLS:
            raise TooManyOverdue(f"{_overdue} earlier grader calls are still running past their deadline")
    state = _Call()

    def run() -> None:
        global _overdue
        try:
            state.value = call()
        except BaseException as exc:  # handed to the caller, which decides what it means
            state.error = exc
        finally:
            with _lock:
                state.finished = True
                if state.overdue:
                    _overdue -= 1
            state.done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    state.done.wait(timeout)
    with _lock:
        if not state.finished:  # decided under the lock, so a call that returns right now is not counted
            state.overdue = True
            _overdue += 1
            raise DeadlineExceeded(f"did not return within {timeout:.3g} s")
    if state.error is not None:
        raise state.error
    return state.value
