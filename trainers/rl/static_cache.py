"""A static KV cache for `trainers.rl.rollout.generate`: the tensors a compiled decoding step reads in place.

A compiled graph specialises on its inputs' shapes, and a CUDA graph on their addresses. The
prefill runs over the model's own (dynamic) cache; its keys and values are then copied into a
`StaticCache` of a fixed length (`static_cache_into`), kept between calls of the same batch size
(`StaticDecoding.cache`), so every decoding step of every rollout of a run sees the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer, StaticCache, StaticLayer

# `trainers.rl.rollout.decode_step`'s signature: (model, token, attention_mask, position_ids, cache, uniforms,
# finished, **sampling) -> (token, logprob, finished).
DecodeStep = Callable[..., tuple[Tensor, Tensor, Tensor]]


@dataclass
class StaticDecoding:
    """How `generate` decodes over a static KV cache.

    Attributes:
        step_fn: `decode_step`, or a compiled copy of it (`trainers.rl.generation.compiled`).
        length: the fewest positions the cache holds (a run's ``max_prompt_length + max_new_tokens``),
            so that calls with different prompt lengths share one shape; more when P + N needs it.
        cache: the cache of the last call, reused by the next call of the same shape: its tensors
            keep their address from call to call, as a CUDA graph recorded over them needs.
    """

    step_fn: DecodeStep
    length: int = 0
    cache: StaticCache | None = None


def static_cache_into(
    model: nn.Module, cache: Any, length: int, *, reuse: StaticCache | None = None
) -> StaticCache | None:
    """The prefilled keys and values of a dynamic cache copied into a `StaticCache` of `length` positions.

    Only models whose cache layers are all full-attention layers are moved (sliding-window and
    linear-attention layers keep their own cache): None otherwise.

    Args:
        model: the causal LM (its config lays out the cache).
        cache: the prefill's cache: B rows of P positions per layer.
        length: positions of the static cache (at least P + the tokens to decode).
        reuse: a static cache to fill again when it has the same shape (its tensors keep their address).

    Returns:
        The static cache, holding the P prefilled positions, or None.
    """
    layers = getattr(cache, "layers", None)
    static = reuse
    if static is None or not _fits(static, layers, length):
        static = StaticCache(config=model.config, max_cache_len=length)
    if layers is None or len(layers) != len(static.layers):
        return None
    pairs = list(zip(static.layers, layers, strict=True))
    if any(type(target) is not StaticLayer or type(source) is not DynamicLayer for target, source in pairs):
        return None
    for target, source in pairs:
        if not target.is_initialized:
            target.lazy_initialization(source.keys, source.values)  # (B, H, length, D), addresses marked static
        filled = source.keys.shape[2]
        target.keys[:, :, :filled].copy_(source.keys)  # later positions are written before they are attended to
        target.values[:, :, :filled].copy_(source.values)
        target.cumulative_length.fill_(filled)
    return static


def _fits(static: StaticCache, layers: Any, length: int) -> bool:
    """Whether a static cache has the shape, type and device a prefill's cache needs."""
    if layers is None or len(layers) != len(static.layers):
        return False
    for target, source in zip(static.layers, layers, strict=True):
        if not target.is_initialized or target.max_cache_len != length or source.keys is None:
            return False
        if target.keys.shape[:2] != source.keys.shape[:2] or target.keys.shape[3] != source.keys.shape[3]:
            return False
        if target.values.shape[3] != source.values.shape[3] or target.keys.dtype != source.keys.dtype:
            return False
        if target.keys.device != source.keys.device:
            return False
    return True
