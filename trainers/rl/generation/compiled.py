"""The compiled decoding step of the ``hf`` backend, when it pays off, and the compile cache on disk.

`trainers.rl.rollout.generate` decodes with `decode_step` (one token's forward over the KV cache and
the next token's sampling). `torch.compile` of that step over a static cache (`static_cache_into`)
replays one graph per token: on CUDA with ``mode="reduce-overhead"`` (CUDA graphs: one launch per
token instead of one per kernel), on the CPU as fused C++ kernels without the Python overhead of
each module call.

**When (``compile_generation`` null).** On CUDA always, on one process: the compile takes seconds
and a CUDA graph removes most of a decode step's launch overhead. On the CPU
(bench/generation_speed.py, builtin:tiny-llama, B = 16 rows × 64 tokens, 2 busy cores; bench/RESULTS.md
"Decoding speed") a step takes 8.6 ms eager and 1.7 ms compiled, a saving of about 7 ms per step,
against a compile of about 26 s cold and 11 s with its graphs in the on-disk cache (Dynamo's
tracing is never cached): a cold compile is repaid after about 3,700 steps, a warm one after
1,600. The rule compiles when a run plans at least `CPU_COMPILE_MIN_DECODE_STEPS` decode steps
(rollouts × max_new_tokens), a margin over the cold break-even for an idle machine, where eager
steps are faster. On one idle thread (16 rows × 32 tokens, RESULTS.md "Decoding speed") a cold
compile is repaid after about 22,000 steps and a warm one after about 4,000, on `builtin:tiny-llama`
(1.3 against 0.6 ms per step) and on a 4-layer model of hidden size 256 alike (5.7 against 4.7 ms:
its 16-row matrix products bound a step, compiled or not): the threshold lies between a machine's
first job and its later ones. A unit test's run of a few rollouts of a few tokens (hundreds of
steps) never compiles. Several processes decode eagerly unless asked (their forwards are collectives).

**Cache.** Inductor keeps compiled graphs on disk (its FX graph cache and AOTAutograd cache, on
by default) under ``TORCHINDUCTOR_CACHE_DIR``; unless that is set, `use_compile_cache` points it
at ``$XDG_CACHE_HOME/rlhf-service/inductor`` (``~/.cache/rlhf-service/inductor``), which outlives
the job and the machine's /tmp, so a later job's compile of the same model shape takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainers.rl.rollout import decode_step
from trainers.rl.static_cache import DecodeStep

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Decode steps that repay a cold compile on 2 busy cores (builtin:tiny-llama, B = 16: 26 s / 7 ms saved per step
# ≈ 3,700), ×2.7 for an idle machine's faster eager steps; between one idle thread's warm and cold break-evens.
CPU_COMPILE_MIN_DECODE_STEPS = 10_000


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rlhf-service/inductor``, or ``~/.cache/rlhf-service/inductor``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "rlhf-service" / "inductor"


def use_compile_cache() -> Path:
    """Point inductor's on-disk cache at `default_cache_dir`, unless ``TORCHINDUCTOR_CACHE_DIR`` names one.

    Returns:
        The cache directory in use.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    # Importing transformers' modeling code sets the variable to inductor's own default (under /tmp):
    # that value counts as unset.
    current = os.environ.get(CACHE_ENV)
    if not current or os.path.abspath(current) == os.path.abspath(torch_default()):
        os.environ[CACHE_ENV] = str(default_cache_dir())
    return Path(os.environ[CACHE_ENV])


def should_compile(setting: bool | None, device: torch.device, *, planned_decode_steps: int | None,
                   distributed: bool = False) -> bool:  # fmt: skip
    """Whether the ``hf`` backend compiles its decoding step (see the module docstring for the rule).

    Args:
        setting: ``compile_generation``: True or False decide; None is the rule.
        device: where the policy runs.
        planned_decode_steps: rollouts × max_new_tokens the run plans (None: not known, no compile on the CPU).
        distributed: whether the job has several processes (the rule leaves their collectives eager).

    Returns:
        Whether to compile.
    """
    if setting is not None:
        return setting
    if distributed:
        return False
    if device.type == "cuda":
        return True
    return planned_decode_steps is not None and planned_decode_steps >= CPU_COMPILE_MIN_DECODE_STEPS


def compiled_decode_step(device: torch.device) -> DecodeStep:
    """`decode_step` compiled for `device`: whole-graph, with CUDA graphs on CUDA (``reduce-overhead``).

    Shapes are static (the KV cache's tensors are static inputs, as CUDA graphs need): one graph per
    batch size, since the backend gives every call the same cache length. Compilation happens at
    the first call of each, from the on-disk cache when it holds the graph.
    """
    use_compile_cache()
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(decode_step, fullgraph=True, dynamic=False, mode=mode)
