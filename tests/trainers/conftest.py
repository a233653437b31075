"""Fixtures for the trainer tests: the builtin tiny model and callbacks that record everything."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# With `tests/` on sys.path (pytest puts it there for tests/conftest.py), this folder would be
# importable as a namespace package called `trainers` when the repository root is not on sys.path
# (plain `pytest` rather than `python -m pytest`). A regular package wins over a namespace one,
# so putting the root on the path, and dropping a namespace `trainers` imported earlier, is enough.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
if getattr(sys.modules.get("trainers"), "__file__", "") is None:
    del sys.modules["trainers"]

from trainers.callbacks import Callbacks  # noqa: E402


class RecordingCallbacks(Callbacks):
    """Keeps every metric and event; saves each checkpoint under `root/checkpoint-<step>`.

    `stop_after` makes `should_stop` return True once that many steps have reported metrics.
    """

    def __init__(self, root: Path | None = None, *, stop_after: int | None = None):
        self.root = root
        self.stop_after = stop_after
        self.metrics: dict[int, dict[str, float]] = {}
        self.events: list[tuple[str, str]] = []
        self.checkpoints: dict[int, tuple[Path | None, dict]] = {}
        self.polls = 0

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = dict(metrics)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict) -> None:
        directory = None
        if self.root is not None:
            directory = self.root / f"checkpoint-{step}"
            directory.mkdir(parents=True)
            save(directory)
        self.checkpoints[step] = (directory, info)

    def should_stop(self) -> bool:
        self.polls += 1
        return self.stop_after is not None and len(self.metrics) >= self.stop_after

    def on_event(self, level: str, message: str) -> None:
        self.events.append((level, message))


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of builtin:tiny-llama; do not modify the model."""
    from trainers.tiny import build_tiny_llama

    return build_tiny_llama()


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]
