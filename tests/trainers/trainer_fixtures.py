"""Shared pieces of the trainer tests: the builtin tiny model and callbacks that record everything.

Not a conftest.py: the suite's other folders import `tests/conftest.py` as the module `conftest`,
and a second conftest.py would take that name over.

Import this module before `trainers` in a test module that uses the package itself (`trainers.run`).
Under plain `pytest` (rather than `python -m pytest`) the repository root is not on sys.path while
`tests/` is, so this folder would be imported as a namespace package called `trainers`. A regular
package wins over a namespace one, so putting the root on the path, and swapping out a namespace
`trainers` imported earlier, is enough.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
if getattr(sys.modules.get("trainers"), "__file__", "") is None:
    del sys.modules["trainers"]
    import trainers  # the real package now

    for _name, _module in list(sys.modules.items()):
        if _name.count(".") == 1 and _name.startswith("trainers."):
            setattr(trainers, _name.partition(".")[2], _module)

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
        self.total_steps: list[int] = []

    def on_start(self, total_steps: int) -> None:
        self.total_steps.append(total_steps)

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


@functools.cache
def tiny():
    """(model, tokenizer) of builtin:tiny-llama, built once; do not modify the model."""
    from trainers.tiny import build_tiny_llama

    return build_tiny_llama()
