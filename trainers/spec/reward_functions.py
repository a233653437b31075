"""Named Python reward functions that `function` graders call: the server's registry (torch-free).

A reward function is ``fn(completion: str, item: Mapping, **kwargs) -> float``: the completion
text, the prompt row it answers (every column of the prompt dataset), and the grader's ``kwargs``.
Functions come from what the server operator installed or configured, never from a request:

- package entry points in the group ``rlhf_service.reward_functions`` (the entry point's name is
  the function's name), and
- modules named in the server settings, imported here, whose functions carry
  ``@reward_function("name")``.

Three built-in functions, ``exact_match``, ``contains_answer`` and ``math_answer`` (final answers of
math problems, see `trainers.spec.math_answers`), are always registered. A function should be pure
and fast (it runs once per sampled completion) and must not change ``item``; whatever it raises
becomes a grader error for that completion, not a failed job. Each call runs in a thread of its own
and may take at most `trainers.spec.graders.GRADER_TIMEOUT_S` seconds: past that it is a grader
error too, and its thread is left to finish (see `trainers.spec.deadlines`); only the linear-time
built-ins in `BUILTIN_FUNCTIONS` run inline. A function must not hold the GIL for long, as no
deadline can end that: for instance, never run Python's ``re`` on a pattern that comes from the prompt row.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

from trainers.spec import math_answers
from trainers.spec.errors import TrainerError

ENTRY_POINT_GROUP = "rlhf_service.reward_functions"
FUNCTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$"

RewardFunction = Callable[..., float]
"""``fn(completion: str, item: Mapping[str, Any], **kwargs) -> float``."""

_F = TypeVar("_F", bound=Callable[..., Any])
_NAME_ATTR = "__reward_function_name__"  # set by the decorator; how module scanning finds functions


class RewardRegistryError(TrainerError):
    """The configured reward functions cannot be loaded (a server configuration error)."""


def reward_function(name: str) -> Callable[[_F], _F]:
    """Mark a function as the reward function `name`, for `load_registry` to collect from its module.

    Args:
        name: the name `function` graders use (letters, digits, ``_ . : -``; at most 128 characters).

    Returns:
        A decorator that returns the function unchanged apart from the mark.

    Raises:
        ValueError: `name` is not a valid function name.
    """
    if not re.fullmatch(FUNCTION_NAME_PATTERN, name):
        raise ValueError(f"invalid reward function name {name!r}: use letters, digits and _ . : -")

    def mark(fn: _F) -> _F:
        setattr(fn, _NAME_ATTR, name)
        return fn

    return mark


def _normalize(text: str) -> str:
    # Case-folded, with runs of whitespace collapsed, so "The  answer\n" equals "the answer".
    return " ".join(str(text).split()).casefold()


def _field(item: Mapping[str, Any], field: str) -> str:
    if field not in item or item[field] is None:
        raise KeyError(f"the prompt row has no {field!r} field")
    return str(item[field])


@reward_function("exact_match")
def exact_match(completion: str, item: Mapping[str, Any], *, field: str = "answer") -> float:
    """1.0 when the completion equals ``item[field]`` up to case and whitespace, else 0.0.

    Args:
        completion: the sampled completion.
        item: the prompt row.
        field: the column holding the expected answer.

    Returns:
        1.0 or 0.0.

    Raises:
        KeyError: the row has no such field (or it is null).
    """
    return float(_normalize(completion) == _normalize(_field(item, field)))


@reward_function("contains_answer")
def contains_answer(
    completion: str, item: Mapping[str, Any], *, field: str = "answer", case_sensitive: bool = False
) -> float:
    """1.0 when ``item[field]`` appears in the completion (whitespace runs collapsed), else 0.0.

    Args:
        completion: the sampled completion.
        item: the prompt row.
        field: the column holding the expected answer.
        case_sensitive: compare case as well; by default case is ignored.

    Returns:
        1.0 or 0.0.

    Raises:
        KeyError: the row has no such field (or it is null).
    """
    answer, text = _field(item, field), completion
    if case_sensitive:
        answer, text = " ".join(answer.split()), " ".join(text.split())
    else:
        answer, text = _normalize(answer), _normalize(text)
    return float(answer in text)


@reward_function("math_answer")
def math_answer(completion: str, item: Mapping[str, Any], *, field: str = "answer") -> float:
    """1.0 when the completion's final answer equals ``item[field]`` numerically or symbolically, else 0.0.

    The reference is what follows the last ``####`` of the field (GSM8K), else its last ``\\boxed{...}``
    (MATH), else the whole field: a number (``1,000``, ``0.5``, ``1/2``) or a LaTeX expression
    (``\\frac{1}{2}``, ``2\\sqrt{2}``). The completion's answer is the first line after its last
    ``####``, else its last ``\\boxed{...}``, else what math-verify finds at its end ("the answer is
    ...", the last number or expression).
    See `trainers.spec.math_answers`.

    Args:
        completion: the sampled completion.
        item: the prompt row.
        field: the column holding the reference answer.

    Returns:
        1.0 or 0.0 (also 0.0 when the completion holds no answer, or one too large to compare).

    Raises:
        KeyError: the row has no such field (or it is null).
        ValueError: the field holds no number or expression, or one too large to compare.
    """
    return float(math_answers.answers_match(_field(item, field), completion))


BUILTIN_FUNCTIONS: tuple[RewardFunction, ...] = (exact_match, contains_answer)
"""Built-ins linear in their input, which the graders call inline (no thread, no deadline)."""

BOUNDED_BUILTIN_FUNCTIONS: tuple[RewardFunction, ...] = (math_answer,)
"""Built-ins that may be slow on some input (SymPy), called like registered functions: each in a thread
under the graders' deadline."""


def load_registry(modules: Sequence[str] = ()) -> dict[str, RewardFunction]:
    """Every reward function the server offers, by name.

    Args:
        modules: dotted module names from the server settings; each is imported and its functions
            marked with `reward_function` are collected.

    Returns:
        Name → function: the built-ins, then entry points of ``rlhf_service.reward_functions``,
        then the modules' functions.

    Raises:
        RewardRegistryError: a module or entry point cannot be imported, an entry point is not
            callable or has an invalid name, or two different functions claim one name.
    """
    registry: dict[str, RewardFunction] = {}
    for fn in (*BUILTIN_FUNCTIONS, *BOUNDED_BUILTIN_FUNCTIONS):
        _add(registry, getattr(fn, _NAME_ATTR), fn, source="built-in")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {ep.name} = {ep.value}"
        try:
            fn = ep.load()
        except Exception as exc:  # an operator's broken package: say which one
            raise RewardRegistryError(f"cannot load {source}: {type(exc).__name__}: {exc}") from exc
        if not callable(fn) or not re.fullmatch(FUNCTION_NAME_PATTERN, ep.name):
            raise RewardRegistryError(f"{source} must be a callable with a valid name")
        _add(registry, ep.name, fn, source=source)
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise RewardRegistryError(f"cannot import reward function module {module_name!r}: {exc}") from exc
        for value in vars(module).values():
            name = getattr(value, _NAME_ATTR, None)
            if isinstance(name, str) and callable(value):
                _add(registry, name, value, source=f"module {module_name}")
    return registry


def _add(registry: dict[str, RewardFunction], name: str, fn: RewardFunction, *, source: str) -> None:
    # A module that imports a registered function (e.g. a built-in) re-exports the same object:
    # that is no conflict. Two different functions under one name would make grading ambiguous.
    if name in registry and registry[name] is not fn:
        raise RewardRegistryError(f"reward function {name!r} from {source} is already registered")
    registry[name] = fn


def unknown_function_problem(name: str, registry: Mapping[str, RewardFunction]) -> str:
    """The message for a ``function`` grader naming no function of `registry`: it lists the names it offers."""
    known = ", ".join(sorted(registry)) or "none"
    return f"unknown reward function {name!r}; this server offers: {known}"


def kwargs_problem(fn: RewardFunction, name: str, kwargs: Mapping[str, Any]) -> str | None:
    """Why `fn` cannot be called with these kwargs, or None (also when its signature is unknown).

    Args:
        fn: the registered function.
        name: its registered name, for the message.
        kwargs: a ``function`` grader's ``kwargs``, passed after the completion and the prompt row.

    Returns:
        The message, or None when the call binds.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind("", {}, **kwargs)
    except TypeError as exc:
        return f"reward function {name!r} does not take these kwargs: {exc}"
    return None
