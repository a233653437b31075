"""Evaluate a reward spec on completions: the rewards of PPO and GRPO apart from the model scores (torch-free).

Pure and per completion: ``evaluate`` renders the templates against the prompt row, runs each
grader and combines the scores as the spec says (see `trainers.spec.rewards` for each score).
Reward models need torch, so the trainer scores those and passes them in as ``model_scores``
(already normalised and clipped, see `trainers.spec.score_rules.normalize_model_score`).

A grader that cannot grade a completion (a template naming a field the row lacks, a templated
regex that RE2 refuses, a reward function that raises or returns no finite number, a missing model
score) scores 0.0 for it and says why in ``errors``; it never raises, so one bad row cannot stop a
training run.

Nothing a grader reads can hang it. Regular expressions are RE2's (`trainers.spec.patterns`: linear
time, no backtracking), and every call that could still be slow (a registered reward function, a
match whose worst case is large) runs under `GRADER_TIMEOUT_S` (`trainers.spec.deadlines`): one that
overruns is a grader error for that completion. Quick matches and the built-in functions run inline.
`evaluate` also takes a deadline for the whole evaluation (the API's dry run), and `evaluate_batch`
polls a stop request between completions, so a cancel need not wait for a slow rollout's grading.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainers.spec import patterns
from trainers.spec.deadlines import DeadlineExceeded, TooManyOverdue, call_with_deadline
from trainers.spec.formulas import formula_value
from trainers.spec.reward_functions import BUILTIN_FUNCTIONS, RewardFunction
from trainers.spec.rewards import (
    FormatGrader,
    FunctionGrader,
    Grader,
    LengthGrader,
    ModelReward,
    MultiGrader,
    RewardSpec,
    StringCheckGrader,
    TextSimilarityGrader,
    is_formula,
)
from trainers.spec.score_rules import combine, length_score
from trainers.spec.similarity import QUICK_SIMILARITY, SimilarityTooCostly, similarity
from trainers.spec.templates import TemplateRef, excerpt, parse_template

GRADER_TIMEOUT_S = 10.0
"""Longest one grader call may take (a regular expression on one completion, or one reward
function call); past it the grader scores 0 for that completion and says so in the errors."""

STOP_POLL_S = 0.5
"""While grading a batch, a stop request is polled between completions at most this often."""


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


class GradingStopped(Exception):
    """`evaluate_batch` was asked to stop before it graded every completion."""


def evaluate(
    spec: RewardSpec,
    *,
    completion: str,
    item: Mapping[str, Any],
    registry: Mapping[str, RewardFunction],
    model_scores: Mapping[str, float] | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
) -> GradeResult:
    """Reward of one completion under a reward spec.

    Args:
        spec: a validated reward spec.
        completion: the sampled completion text (the prompt excluded).
        item: the prompt row the completion answers, every column of it.
        registry: the server's reward functions by name, for ``function`` graders.
        model_scores: reward-model score of this completion by checkpoint id, already normalised and
            clipped by the trainer; needed when the spec has ``model`` rewards.
        timeout: seconds one grader call may take; None: `GRADER_TIMEOUT_S`.
        deadline: a `time.monotonic` instant by which the whole evaluation must end: each pattern
            or function call gets at most the time left, and one due after it is not run (a grader
            error); graders that run no such call (length, eq, model...) still score. None: no
            limit beyond `timeout`.

    Returns:
        The combined reward, each grader's score and the grader errors.
    """
    per_grader: dict[str, float] = {}
    errors: list[str] = []
    graders = spec.graders if isinstance(spec, MultiGrader) else [spec]
    scores = []
    for grader in graders:
        limit = GRADER_TIMEOUT_S if timeout is None else timeout
        if deadline is not None:
            limit = max(0.0, min(limit, deadline - time.monotonic()))
        try:
            score = grade(grader, completion=completion, item=item, registry=registry, model_scores=model_scores,
                          timeout=limit)
        except GraderError as exc:
            score = 0.0
            errors.append(f"{grader.name}: {exc}")
        per_grader[grader.name] = score
        scores.append(score)
    if isinstance(spec, MultiGrader) and is_formula(spec.calculate_output):
        try:
            reward = formula_value(spec.calculate_output, per_grader)
        except Exception as exc:  # any failure of the arithmetic is this completion's grader error
            reward = 0.0
            errors.append(f"{spec.name}: calculate_output: {type(exc).__name__}: {exc}")
    elif isinstance(spec, MultiGrader):
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
    *,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[GradeResult]:
    """Rewards of a batch of completions, each with its own prompt row.

    Args:
        spec: a validated reward spec.
        completions: B completion texts.
        items: B prompt rows, ``items[i]`` the row ``completions[i]`` answers (GRPO repeats a row G times).
        registry: the server's reward functions by name.
        model_scores: checkpoint id → B normalised, clipped scores, in the order of `completions`.
        timeout: seconds one grader call may take; None: `GRADER_TIMEOUT_S`.
        should_stop: polled between completions, at most every `STOP_POLL_S` seconds (polling may
            cost a database read); True ends the grading.

    Returns:
        B results, in order.

    Raises:
        ValueError: the sequences differ in length (a caller's bug, not a grader error).
        GradingStopped: `should_stop` returned True.
    """
    if len(items) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(items)} prompt rows")
    for checkpoint_id, scores in (model_scores or {}).items():
        if len(scores) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(scores)} scores from {checkpoint_id!r}")
    results = []
    polled = time.monotonic()
    for i, (completion, item) in enumerate(zip(completions, items, strict=True)):
        if should_stop is not None and time.monotonic() - polled >= STOP_POLL_S:
            if should_stop():
                raise GradingStopped(f"stopped after grading {i} of {len(completions)} completions")
            polled = time.monotonic()
        row_scores = {k: v[i] for k, v in model_scores.items()} if model_scores else None
        results.append(evaluate(spec, completion=completion, item=item, registry=registry, model_scores=row_scores,
                                timeout=timeout))
    return results


def grade(
    grader: Grader,
    *,
    completion: str,
    item: Mapping[str, Any],
    registry: Mapping[str, RewardFunction],
    model_scores: Mapping[str, float] | None = None,
    timeout: float | None = None,
) -> float:
    """Score of one completion under one grader (not a multi), before its weight.

    Args:
        grader: a validated grader.
        completion: the completion text.
        item: its prompt row.
        registry: the server's reward functions by name.
        model_scores: normalised, clipped reward-model scores by checkpoint id.
        timeout: seconds a regular expression or reward function may take; None: `GRADER_TIMEOUT_S`.

    Returns:
        The score (see each grader's documentation).

    Raises:
        GraderError: the grader cannot grade this completion, or overran `timeout`.
    """
    timeout = GRADER_TIMEOUT_S if timeout is None else timeout
    match grader:
        case ModelReward():
            if model_scores is None or grader.checkpoint_id not in model_scores:
                raise GraderError(f"no score from reward model {grader.checkpoint_id!r}")
            return _finite(model_scores[grader.checkpoint_id], f"reward model {grader.checkpoint_id!r}")
        case StringCheckGrader():
            text = render(grader.input, completion=completion, item=item)
            reference = render(grader.reference, completion=completion, item=item)
            return string_check(grader.operation, text, reference, timeout=timeout)
        case TextSimilarityGrader():
            text = render(grader.input, completion=completion, item=item)
            reference = render(grader.reference, completion=completion, item=item)
            call = functools.partial(similarity, grader.evaluation_metric, text, reference)
            quick = len(text) * len(reference) <= QUICK_SIMILARITY  # ROUGE-L is quadratic, in Python
            try:
                score = call() if quick else _bounded(call, timeout, f"the {grader.evaluation_metric} similarity")
            except SimilarityTooCostly as exc:
                raise GraderError(str(exc)) from None
            return score if grader.pass_threshold is None else float(score >= grader.pass_threshold)
        case LengthGrader():
            if grader.target_chars is not None:
                return length_score(len(completion), grader.target_chars, grader.target_chars)
            return length_score(len(completion), grader.min_chars, grader.max_chars)
        case FormatGrader():
            return float(_regex(patterns.fullmatch, grader.pattern, completion, timeout, dot_all=True))
        case FunctionGrader():
            return _call(grader, registry, completion, item, timeout)
        case _:
            raise GraderError(f"cannot grade a {type(grader).__name__}")


def string_check(operation: str, text: str, reference: str, *, timeout: float | None = None) -> float:
    """1.0 when `operation` holds between `text` (the rendered input) and `reference`, else 0.0.

    Args:
        operation: ``eq``, ``ne``, ``like``/``contains``, ``ilike``/``icontains`` or ``regex``.
        text: the rendered input.
        reference: the rendered reference (for ``regex``, an RE2 pattern searched for in `text`).
        timeout: seconds the ``regex`` match may take; None: `GRADER_TIMEOUT_S`.

    Returns:
        1.0 or 0.0.

    Raises:
        GraderError: RE2 refuses the reference of ``regex``, or its match overran `timeout`.
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
                patterns.compile_pattern(reference)  # refused here, so the error quotes the reference
            except patterns.PatternError as exc:
                raise GraderError(f"reference {excerpt(reference)}: {exc}") from exc
            return float(_regex(patterns.search, reference, text, GRADER_TIMEOUT_S if timeout is None else timeout))
        case _:
            raise GraderError(f"unknown string_check operation {operation!r}")


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
    grader: FunctionGrader,
    registry: Mapping[str, RewardFunction],
    completion: str,
    item: Mapping[str, Any],
    timeout: float,
) -> float:
    fn = registry.get(grader.function)
    if fn is None:
        raise GraderError(f"unknown reward function {grader.function!r}")
    name = f"reward function {grader.function!r}"
    call = functools.partial(fn, completion, item, **grader.kwargs)
    try:
        # The built-ins are this module's neighbours, linear in their input: no thread needed.
        result = call() if fn in BUILTIN_FUNCTIONS else _bounded(call, timeout, name)
    except GraderError:
        raise
    except Exception as exc:  # server code failing on one row must not end the run
        raise GraderError(f"{name} raised {type(exc).__name__}: {exc}") from exc
    return _finite(result, name)


def _regex(match: Callable[..., bool], pattern: str, text: str, timeout: float, *, dot_all: bool = False) -> bool:
    """`patterns.search` or `patterns.fullmatch`, inline when quick whatever happens, else with a deadline."""
    try:
        work = patterns.worst_case_work(pattern, text, dot_all=dot_all)
    except patterns.PatternError as exc:  # a spec that skipped `validate_reward_spec`
        raise GraderError(f"pattern {excerpt(pattern)}: {exc}") from exc
    if work <= patterns.QUICK_WORK:
        return match(pattern, text, dot_all=dot_all)  # a thread would cost more than the match
    return _bounded(functools.partial(match, pattern, text, dot_all=dot_all), timeout, "the regular expression")


def _bounded(call: Callable[[], Any], timeout: float, what: str) -> Any:
    """``call()`` within `timeout` seconds, an overrun being a `GraderError` about `what`."""
    if timeout <= 0:
        raise GraderError(f"{what} was not run: the time allowed for grading ran out")
    try:
        return call_with_deadline(call, timeout)
    except DeadlineExceeded as exc:
        raise GraderError(f"{what} {exc}") from None
    except TooManyOverdue as exc:
        raise GraderError(f"{what} was not run: {exc}") from None
    except patterns.PatternError as exc:
        raise GraderError(f"{what}: {exc}") from exc


def _finite(value: Any, source: str) -> float:
    # numbers.Real takes int, float, bool and numpy scalars, and refuses strings that float() would parse.
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise GraderError(f"{source} returned {value!r}, not a finite number")
    return float(value)
