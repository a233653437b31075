"""The run's callbacks as every rank sees them: rank 0 reports, the others stay silent (`RankCallbacks`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers.distributed.ranks import Ranks
from trainers.spec.callbacks import Callbacks


class RankCallbacks(Callbacks):
    """Rank 0 passes every hook to the run's callbacks; the other ranks report nothing.

    Metrics, samples, events, the start and checkpoints are written once, by rank 0; everything they carry
    is already global (metrics are summed over ranks, and a checkpoint's weights gathered, before
    the hooks are called). A stop is decided by rank 0 alone, which polls the run's callbacks, and
    broadcast, so every rank stops after the same step. On one process this is the run's
    callbacks, unchanged.

    Args:
        callbacks: the run's callbacks (those of rank 0 are used; other ranks may pass no-op ones).
        ranks: this process's ranks.
    """

    def __init__(self, callbacks: Callbacks, ranks: Ranks):
        self.inner = callbacks
        self.ranks = ranks

    def on_start(self, total_steps: int) -> None:
        if self.ranks.is_main:
            self.inner.on_start(total_steps)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.ranks.is_main:
            self.inner.on_metrics(step, metrics)

    def on_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.ranks.is_main:
            self.inner.on_samples(step, rows)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict[str, Any]) -> None:
        if self.ranks.is_main:
            self.inner.on_checkpoint(step, save, info)

    def should_stop(self) -> bool:
        """Rank 0's answer, on every rank: a collective, so every rank polls at the same point of its loop."""
        return self.ranks.broadcast(self.local_stop())

    def local_stop(self) -> bool:
        """Rank 0's poll without telling the other ranks (False on them), for polls ranks do not make in step,
        e.g. by wall-clock time while grading; a rank that stops on it must then agree with the others
        through `should_stop` (or `Ranks.broadcast`) before its next collective."""
        return self.inner.should_stop() if self.ranks.is_main else False

    def on_event(self, level: str, message: str) -> None:
        if self.ranks.is_main:
            self.inner.on_event(level, message)
