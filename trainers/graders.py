"""Evaluate a reward spec on completions: the rewards of PPO and GRPO apart from the model scores (torch-free).

Pure and per completion: ``evaluate`` renders the templates against the prompt row, runs each
grader and combines the scores as the spec says (see `trainers.rewards_spec` for each score).
Reward models need torch, so the trainer scores those and passes them in as ``model_scores``
(already normalised and clipped, see `normalize_model_score`).

A grader that cannot grade a completion (a template naming a field the row lacks, a templated
regex that does not compile, a reward function that raises or returns no finite number, a
missing model score) scores 0.0 for it and says why in ``errors``; it never raises, so one bad row
cannot stop a training run.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from trainers.reward_functions import RewardFunction
from trainers.rewards_spec import (
    FormatGrader,
    FunctionGrader,
    Grader,
    LengthGrader,
    ModelReward,
    MultiGrader,
    RewardSpec,
    StringCheckGrader,
    TemplateRef,
    parse_template,
)


@dataclass(frozen=True, slots=True)
class GradeResult:
    """The reward of one completion.

    Attributes:
        reward: the combined reward the trainer optimises.
        per_grader: each grader's own score (before weights) by grader name; GRPO logs them as
            ``reward/<name>``.
        errors: why a grader could not grade this completion, ``"<name>: <why>"``; each such grader
            scored 0.0.
    """

    reward: float
    per_grader: dict[str, float]
    errors: list[str]


class GraderError(Exception):
    """A grader cannot grade this completion; it scores 0.0 and the message joins `GradeResult.errors`."""


def evaluate(
    spec: RewardSpec,
    *,
    completion: str,
    item: Mapping[str, Any],
    registry: Mapping[str, RewardFunction],
    model_scores: Mapping[str, float] | None = None,
) -> GradeResult:
    """Reward of one completion under a reward spec.

    Args:
        spec: a validated reward spec.
        completion: the sampled completion text (the prompt excluded).
        item: the prompt row the completion answers, every column of it.
        registry: the server's reward functions by name, for ``function`` graders.
        model_scores: reward-model score of this completion by checkpoint id, already normalised and
            clipped by the trainer; needed when the spec has ``model`` rewards.

    Returns:
        The combined reward, each grader's score and the grader errors.
    """
    per_grader: dict[str, float] = {}
    errors: list[str] = []
    graders = spec.graders if isinstance(spec, MultiGrader) else [spec]
    scores = []
    for grader in graders:
        try:
            score = grade(grader, completion=completion, item=item, registry=registry, model_scores=model_scores)
        except GraderError as exc:
            score = 0.0
            errors.append(f"{grader.name}: {exc}")
        per_grader[grader.name] = score
        scores.append(score)
    if isinstance(spec, MultiGrader):
        reward = combine(spec.calculate_output, scores, [g.weight for g in graders])
    else:
        reward = spec.weight * scores[0]
    return GradeResult(reward=reward, per_grader=per_grader, errors=errors)


def evaluate_batch(
    spec: RewardSpec,
    completions: Sequence[str],
    items: Sequence[Mapping[str, Any]],
    registry: Mapping[str, RewardFunction],
    model_scores: Mapping[str, Sequence[float]] | None = None,
) -> list[GradeResult]:
    """Rewards of a batch of completions, each with its own prompt row.

    Args:
        spec: a validated reward spec.
        completions: B completion texts.
        items: B prompt rows, ``items[i]`` the row ``completions[i]`` answers (GRPO repeats a row G times).
        registry: the server's reward functions by name.
        model_scores: checkpoint id → B normalised, clipped scores, in the order of `completions`.

    Returns:
        B results, in order.

    Raises:
        ValueError: the sequences differ in length (a caller's bug, not a grader error).
    """
    if len(items) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(items)} prompt rows")
    for checkpoint_id, scores in (model_scores or {}).items():
        if len(scores) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(scores)} scores from {checkpoint_id!r}")
    results = []
    for i, (completion, item) in enumerate(zip(completions, items, strict=True)):
        row_scores = {k: v[i] for k, v in model_scores.items()} if model_scores else None
        results.append(evaluate(spec, completion=completion, item=item, registry=registry, model_scores=row_scores))
    return results


def grade(
    grader: Grader,
    *,
    completion: str,
    item: Mapping[str, Any],
    registry: Mapping[str, RewardFunction],
    model_scores: Mapping[str, float] | None = None,
) -> float:
    """Score of one completion under one grader (not a multi), before its weight.

    Args:
        grader: a validated grader.
        completion: the completion text.
        item: its prompt row.
        registry: the server's reward functions by name.
        model_scores: normalised, clipped reward-model scores by checkpoint id.

    Returns:
        The score (see each grader's documentation).

    Raises:
        GraderError: the grader cannot grade this completion.
    """
    match grader:
        case ModelReward():
            if model_scores is None or grader.checkpoint_id not in model_scores:
                raise GraderError(f"no score from reward model {grader.checkpoint_id!r}")
            return _finite(model_scores[grader.checkpoint_id], f"reward model {grader.checkpoint_id!r}")
        case StringCheckGrader():
            text = render(grader.input, completion=completion, item=item)
            reference = render(grader.reference, completion=completion, item=item)
            return string_check(grader.operation, text, reference)
        case LengthGrader():
            if grader.target_chars is not None:
                return length_score(len(completion), grader.target_chars, grader.target_chars)
            return length_score(len(completion), grader.min_chars, grader.max_chars)
        case FormatGrader():
            return float(re.fullmatch(grader.pattern, completion, re.DOTALL) is not None)
        case FunctionGrader():
            return _call(grader, registry, completion, item)
        case _:
            raise GraderError(f"cannot grade a {type(grader).__name__}")


def string_check(operation: str, text: str, reference: str) -> float:
    """1.0 when `operation` holds between `text` (the rendered input) and `reference`, else 0.0.

    Args:
        operation: ``eq``, ``ne``, ``like``/``contains``, ``ilike``/``icontains`` or ``regex``.
        text: the rendered input.
        reference: the rendered reference (a regular expression for ``regex``).

    Returns:
        1.0 or 0.0.

    Raises:
        GraderError: the reference of ``regex`` does not compile.
    """
    match operation:
        case "eq":
            return float(text == reference)
        case "ne":
            return float(text != reference)
        case "like" | "contains":
            return float(reference in text)
        case "ilike" | "icontains":
            return float(reference.casefold() in text.casefold())
        case "regex":
            try:
                pattern = re.compile(reference)
            except re.error as exc:
                raise GraderError(f"reference {reference!r} is not a valid regular expression: {exc}") from exc
            return float(pattern.search(text) is not None)
        case _:
            raise GraderError(f"unknown string_check operation {operation!r}")


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


def render(template: str, *, completion: str, item: Mapping[str, Any]) -> str:
    """Fill a template's ``{{sample.output_text}}`` and ``{{item.<field>}}`` references.

    Args:
        template: a template validated by the spec.
        completion: the completion text.
        item: the prompt row; a string field is inserted as is, anything else as JSON.

    Returns:
        The rendered text.

    Raises:
        GraderError: a referenced field is missing or null in the row.
    """
    parts = parse_template(template)
    return "".join(p if isinstance(p, str) else _value(p, completion, item) for p in parts)


def _value(ref: TemplateRef, completion: str, item: Mapping[str, Any]) -> str:
    if ref.source == "sample":
        return completion
    value: Any = item
    for depth, key in enumerate(ref.path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            missing = ".".join(ref.path[: depth + 1])
            raise GraderError(f"{ref.text}: the prompt row has no field item.{missing}")
    if value is None:
        raise GraderError(f"{ref.text}: the field is null in this prompt row")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _call(
    grader: FunctionGrader, registry: Mapping[str, RewardFunction], completion: str, item: Mapping[str, Any]
) -> float:
    fn = registry.get(grader.function)
    if fn is None:
        raise GraderError(f"unknown reward function {grader.function!r}")
    try:
        result = fn(completion, item, **grader.kwargs)
    except Exception as exc:  # server code failing on one row must not end the run
        raise GraderError(f"reward function {grader.function!r} raised {type(exc).__name__}: {exc}") from exc
    return _finite(result, f"reward function {grader.function!r}")


def _finite(value: Any, source: str) -> float:
    # numbers.Real takes int, float, bool and numpy scalars, and refuses strings that float() would parse.
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise GraderError(f"{source} returned {value!r}, not a finite number")
    return float(value)
