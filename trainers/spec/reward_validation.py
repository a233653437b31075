"""Every problem of a reward spec, each at its field path: what the service checks before it accepts a job (torch-free).

`trainers.spec.rewards` checks what a spec can check alone. `validate_reward_spec` adds what needs
the server: the registered reward functions (their names and the kwargs their signatures take) and
RE2, which compiles each literal pattern. `row_templates` and `row_problem` check the templates
that read the prompt row against a dataset's rows. `error_path` turns a pydantic error's location inside a
spec into the field path the service reports (``reward.graders[1].reference``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from trainers.spec.graders import GraderError, render
from trainers.spec.patterns import PatternError, compile_pattern
from trainers.spec.reward_functions import RewardFunction, kwargs_problem, unknown_function_problem
from trainers.spec.rewards import (
    REGISTRY_CONTEXT,
    FormatGrader,
    FunctionGrader,
    Grader,
    MultiGrader,
    RewardSpec,
    StringCheckGrader,
    TextSimilarityGrader,
    leaf_graders,
    reward_spec_adapter,
)
from trainers.spec.templates import excerpt, is_literal, parse_template

_TYPES = frozenset({"model", "string_check", "text_similarity", "length", "format", "function", "multi"})


def validate_reward_spec(
    spec: RewardSpec | Mapping[str, Any], *, registry: Mapping[str, RewardFunction], prefix: str = "reward"
) -> list[tuple[str, str]]:
    """Every problem of a reward spec: the model's checks, those needing the server's registry, and RE2's.

    RE2 compiles each literal pattern here rather than in the model, as compiling holds the GIL:
    a service calls this from a worker thread, where other requests still get their turns.

    Args:
        spec: a validated spec (the registry and RE2 checks remain), or its JSON form (all checks run).
        registry: the server's reward functions by name (`trainers.spec.reward_functions.load_registry`).
        prefix: the path of the spec in the request, prepended to every field path.

    Returns:
        ``(field path, message)`` pairs such as ``("reward.graders[1].function", "unknown ...")``;
        empty when the spec is valid.
    """
    if isinstance(spec, Mapping):
        try:
            spec = reward_spec_adapter.validate_python(spec, context={REGISTRY_CONTEXT: registry})
        except ValidationError as exc:
            return [(error_path(e["loc"], e["type"], prefix=prefix), e["msg"]) for e in exc.errors()]
    problems: list[tuple[str, str]] = []
    for i, grader in enumerate(leaf_graders(spec)):
        path = f"{prefix}.graders[{i}]" if isinstance(spec, MultiGrader) else prefix
        if isinstance(grader, FunctionGrader):
            if grader.function not in registry:
                problems.append((f"{path}.function", unknown_function_problem(grader.function, registry)))
            elif problem := kwargs_problem(registry[grader.function], grader.function, grader.kwargs):
                problems.append((f"{path}.kwargs", problem))
        elif field := _literal_pattern_field(grader):
            try:
                compile_pattern(getattr(grader, field), dot_all=isinstance(grader, FormatGrader))
            except PatternError as exc:
                problems.append((f"{path}.{field}", str(exc)))
    return problems


def _literal_pattern_field(grader: Grader) -> str | None:
    """The field of a grader that holds a regular expression known before grading, if any."""
    if isinstance(grader, FormatGrader):
        return "pattern"
    if isinstance(grader, StringCheckGrader) and grader.operation == "regex" and is_literal(
        parse_template(grader.reference)
    ):
        return "reference"
    return None


def error_path(loc: tuple[int | str, ...], error_type: str = "", *, prefix: str = "reward") -> str:
    """The field path of a pydantic error inside a reward spec, e.g. ``reward.graders[1].reference``.

    Pydantic puts the grader type of a discriminated union in the location
    (``("multi", "graders", 1, "string_check", "reference")``); it is no field, so it is dropped.

    Args:
        loc: the error's location relative to the spec.
        error_type: the pydantic error type; a wrong or missing ``type`` gets ``.type`` appended.
        prefix: the path of the spec itself.

    Returns:
        The dotted path with list positions in brackets.
    """
    path = prefix
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TYPES and (i == 0 or isinstance(loc[i - 1], int)):
            continue  # a union tag: the first segment, or right after a position in `graders`
        else:
            path += f".{part}"
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        path += ".type"
    return path


def row_templates(spec: RewardSpec, *, prefix: str = "reward") -> list[tuple[str, str, bool]]:
    """The templates of a spec that read the prompt row: ``(field path, template, compiled as a regex)``.

    Only these can fail on a row; a spec with none needs no look at the data.

    Args:
        spec: a validated spec.
        prefix: the path of the spec in the request.

    Returns:
        E.g. ``[("reward.graders[0].reference", "{{item.answer}}", False)]``. A templated regex whose
        reference also reads the completion is not compiled here (its pattern depends on the completion).
    """
    found = []
    for i, grader in enumerate(leaf_graders(spec)):
        if not isinstance(grader, StringCheckGrader | TextSimilarityGrader):
            continue
        path = f"{prefix}.graders[{i}]" if isinstance(spec, MultiGrader) else prefix
        for field in ("input", "reference"):
            parts = [p for p in parse_template(getattr(grader, field)) if not isinstance(p, str)]
            if any(p.source == "item" for p in parts):
                regex = (field == "reference" and isinstance(grader, StringCheckGrader) and grader.operation == "regex"
                         and all(p.source == "item" for p in parts))
                found.append((f"{path}.{field}", getattr(grader, field), regex))
    return found


def row_problem(
    templates: Sequence[tuple[str, str, bool]], rows: Iterable[tuple[int, int, Mapping[str, Any]]], *, dataset: str
) -> tuple[str, str] | None:
    """The first row that a spec's `row_templates` cannot be rendered for, or whose templated regex RE2 refuses.

    Args:
        templates: `row_templates` of the spec.
        rows: ``(index, line, row)`` of the prompt rows, as stored (the row is what graders read as ``item``).
        dataset: the request field naming the dataset, for the message (``dataset_id``).

    Returns:
        ``(field path, message)`` naming the template, the field and the row; None when every row works.
    """
    for index, line, row in rows:
        for path, template, regex in templates:
            try:
                rendered = render(template, completion="", item=row)
            except GraderError as exc:
                return path, f"{path}: {dataset} row {index} (line {line}): {exc}"
            if regex:
                try:
                    compile_pattern(rendered)
                except PatternError as exc:
                    return path, (f"{path}: {dataset} row {index} (line {line}): {excerpt(template)} renders "
                                  f"the regex {excerpt(rendered)}: {exc}")
    return None
