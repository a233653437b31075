"""Every problem of a reward spec, each at its field path: what the service checks before it accepts a job (torch-free).

`trainers.spec.rewards` checks what a spec can check alone. `validate_reward_spec` adds what needs
the server: the registered reward functions (their names and the kwargs their signatures take) and
RE2, which compiles each literal pattern. `error_path` turns a pydantic error's location inside a
spec into the field path the service reports (``reward.graders[1].reference``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

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
    leaf_graders,
    reward_spec_adapter,
)
from trainers.spec.templates import is_literal, parse_template

_TYPES = frozenset({"model", "string_check", "length", "format", "function", "multi"})


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
