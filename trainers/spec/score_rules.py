"""The arithmetic of rewards: a length's score, a multi's combination, a model score's normalisation (torch-free).

Pure functions of numbers, which `trainers.spec.graders` applies to each completion and the
trainers apply to reward-model scores (`normalize_model_score`); `trainers.spec.rewards` documents
each grader's score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from trainers.spec.rewards import ModelReward


def length_score(n: int, min_chars: int | None, max_chars: int | None) -> float:
    """Score of a length `n`: 1 inside [min, max], falling linearly outside (see `LengthGrader`).

    Args:
        n: the completion's length in characters.
        min_chars: shortest length scoring 1 (None or 0: no lower bound).
        max_chars: longest length scoring 1 (None: no upper bound; else ≥ 1).

    Returns:
        ``n / min_chars`` below the range, ``max(0, 2 − n / max_chars)`` above it, else 1.0.
    """
    if min_chars and n < min_chars:
        return n / min_chars
    if max_chars is not None and n > max_chars:
        return max(0.0, 2.0 - n / max_chars)
    return 1.0


def combine(
    calculate_output: Literal["weighted_sum", "mean", "min", "max"], scores: Sequence[float], weights: Sequence[float]
) -> float:
    """A multi grader's reward from its graders' scores.

    Args:
        calculate_output: how to combine.
        scores: each grader's score, N ≥ 1.
        weights: each grader's weight, used by ``weighted_sum`` only.

    Returns:
        ``Σ w_i·s_i``, or the mean, minimum or maximum of the scores.
    """
    match calculate_output:
        case "weighted_sum":
            return math.fsum(w * s for w, s in zip(weights, scores, strict=True))
        case "mean":
            return math.fsum(scores) / len(scores)
        case "min":
            return min(scores)
        case "max":
            return max(scores)
        case _:
            raise ValueError(f"unknown calculate_output {calculate_output!r}")


def normalize_model_score(score: float, spec: ModelReward, *, mean: float | None, std: float | None) -> float:
    """What a reward model's raw score becomes under a ``model`` reward: normalised, then clipped.

    Args:
        score: the raw score at the completion's last token.
        spec: the model reward (``normalize`` and ``clip``).
        mean: reward mean the reward-model job recorded at the checkpoint (None when it has none).
        std: reward std recorded with it.

    Returns:
        ``(score − mean) / std`` when ``normalize`` and the statistics exist (std > 0), else the raw
        score; then bounded to ``[−clip, clip]`` when ``clip`` is set.
    """
    if spec.normalize and mean is not None and std is not None and std > 0:
        score = (score - mean) / std
    if spec.clip is not None:
        score = min(max(score, -spec.clip), spec.clip)
    return score
