"""Loaded models kept between requests, least recently used first, within one byte budget."""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar


class Sized(Protocol):
    weight_bytes: int  # parameters and buffers


T = TypeVar("T", bound=Sized)


class ModelCache:
    """Models of any kind (reward scorers, chat models) by (kind, key), within `cache_bytes` in all.

    One budget for every kind, so a process that scores and generates holds no more than it was
    given. The model just used is kept even when it alone exceeds the budget: the next call with
    it is the likeliest one. A key that is an absolute path names a directory; when it has been
    deleted, the model is loaded again (and fails) rather than served from memory.
    """

    def __init__(self, cache_bytes: int):
        self.cache_bytes = cache_bytes
        self.loads = 0
        self._entries: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, kind: str, key: str, load: Callable[[], T]) -> T:
        """The cached model of `kind` under `key`, else `load()`'s, which is then cached."""
        entry = self._entries.pop((kind, key), None)
        if entry is None or (Path(key).is_absolute() and not Path(key).is_dir()):
            entry = load()
            self.loads += 1
        self._entries[(kind, key)] = entry
        while len(self._entries) > 1 and self.total_bytes() > self.cache_bytes:
            self._entries.popitem(last=False)
        return entry

    def total_bytes(self) -> int:
        return sum(e.weight_bytes for e in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        gc.collect()
        _empty_cuda_cache()

    def stats(self) -> dict[str, Any]:
        """Keys (least recently used first) in `cached`, and each entry's kind and size in `entries`."""
        entries = [{"kind": kind, "key": key, "bytes": e.weight_bytes} for (kind, key), e in self._entries.items()]
        return {"loads": self.loads, "cached_bytes": self.total_bytes(), "cache_bytes": self.cache_bytes,
                "cached": [e["key"] for e in entries], "entries": entries}  # fmt: skip


def _empty_cuda_cache() -> None:
    """Give freed GPU memory back to the device, when torch is loaded and has CUDA."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def weight_bytes(model: Any) -> int:
    """Bytes of `model`'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
