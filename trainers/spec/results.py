"""What `trainers.run` takes and returns besides the job spec (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# The cumulative count of non-padding tokens a run's training forward passes have read, a metric every
# trainer reports (`trainers.token_count`); the worker's token rate and OpenAI's `trained_tokens` read it.
NUM_TOKENS_METRIC = "train/num_tokens"


@dataclass
class TrainingData:
    """Canonical rows for one job (see `trainers.spec.formats`).

    Preference rows are ``{"prompt", "chosen", "rejected", ...}`` where each value is a string or
    a list of ``{"role", "content"}`` messages; for conversational rows the prompt holds the
    conversation so far and chosen/rejected hold the assistant message(s). Prompt rows (PPO,
    GRPO) are ``{"prompt", ...}``. `ptx` holds plain-text rows ``{"text": str}`` for PPO-ptx's
    language-modelling loss (`trainers.rl.ptx`), read only when ``ptx_coef > 0``.
    """

    train: Sequence[dict[str, Any]]
    eval: Sequence[dict[str, Any]] | None = None
    ptx: Sequence[dict[str, Any]] | None = None


@dataclass
class RunResult:
    """How a run ended."""

    status: Literal["completed", "stopped"]
    step: int  # optimizer steps done in total (including those before a resume)
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's metrics
