"""The arithmetic formulas of ``multi`` graders, as OpenAI's ``calculate_output`` writes them (torch-free).

A formula combines the graders' scores by their names, e.g. ``0.7 * correct + 0.3 * min(1, fmt)``.
It may hold numbers, grader names, ``+ - * /``, ``**`` or ``^`` for a power (``^`` is OpenAI's
power operator, with a power's precedence; never a bitwise xor here), unary ``-``/``+``,
parentheses, and calls to `FUNCTIONS`.
Anything else (attributes, subscripts, comparisons, strings, keyword arguments) is refused when
the spec is validated, by `check_formula`; `formula_value` evaluates a checked formula with
simpleeval (https://github.com/danthedeckie/simpleeval), never Python's ``eval``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from typing import Any

from simpleeval import SimpleEval


def _clip(value: float, low: float, high: float) -> float:
    """`value` bounded to [low, high]."""
    return min(max(value, low), high)


def _power(base: float, exponent: float) -> float:
    """``base ** exponent`` in floats: an overflow is an OverflowError at once, where integers would grow unbounded."""
    return float(base) ** float(exponent)


FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
    "floor": math.floor, "ceil": math.ceil, "clip": _clip,
}
"""The functions a formula may call: OpenAI's (min, max, abs, floor, ceil, exp, sqrt, log: natural) and
``clip(x, low, high)``."""

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: _power, ast.USub: operator.neg, ast.UAdd: operator.pos,
}
_ARITY = {"clip": (3, 3), "min": (1, 32), "max": (1, 32), "log": (1, 1)}  # the rest take exactly one argument
MAX_FORMULA_CHARS = 1000


class FormulaError(ValueError):
    """A formula that cannot be parsed or names something it may not (raised at validation)."""


def formula_names(formula: str) -> set[str]:
    """The grader names a formula reads.

    Args:
        formula: the ``calculate_output`` text.

    Returns:
        Every name that is not a called function.

    Raises:
        FormulaError: the formula is not an arithmetic expression of the allowed form.
    """
    return set(_checked(formula)[1])


def check_formula(formula: str, names: Collection[str]) -> None:
    """Refuse a formula that is not arithmetic of the allowed form, or reads a name no grader has.

    Args:
        formula: the ``calculate_output`` text.
        names: the names of the multi's graders.

    Raises:
        FormulaError: what is wrong, quoting the name or the construct at fault.
    """
    unknown = sorted(set(_checked(formula)[1]) - set(names))
    if unknown:
        raise FormulaError(
            f"calculate_output names {unknown[0]!r}, which is no grader of this multi (its graders: "
            f"{', '.join(sorted(names))}); a formula reads a grader's score by its name, which must then be an "
            "identifier (letters, digits and _)"
        )


def formula_value(formula: str, scores: Mapping[str, float]) -> float:
    """Evaluate a checked formula on the graders' scores.

    Args:
        formula: a formula `check_formula` accepted.
        scores: each grader's score by name.

    Returns:
        The formula's value, a finite float.

    Raises:
        ArithmeticError: a division by zero, an overflow, or a result that is not finite.
        ValueError: a function outside its domain (``sqrt(-1)``, ``log(0)``).
    """
    tree, _ = _checked(formula)
    evaluator = SimpleEval(operators=_OPERATORS, functions=FUNCTIONS, names=dict(scores))
    value = evaluator.eval(formula, previously_parsed=tree.body)
    if isinstance(value, complex) or not math.isfinite(value):  # (-1) ** 0.5 is complex in Python
        raise ArithmeticError(f"calculate_output gave {value!r}, not a finite number")
    return float(value)


@lru_cache(maxsize=256)
def _checked(formula: str) -> tuple[ast.Expression, tuple[str, ...]]:
    """The parsed formula and the names it reads; FormulaError on anything but the allowed arithmetic."""
    if len(formula) > MAX_FORMULA_CHARS:
        raise FormulaError(f"calculate_output has {len(formula)} characters; at most {MAX_FORMULA_CHARS}")
    try:
        # OpenAI's ^ is a power: written as ** it also gets a power's precedence (Python's ^, a xor, binds
        # looser than +). A formula holds no strings, so no ^ is anything else.
        tree = ast.parse(formula.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"calculate_output {formula!r} is not an arithmetic formula: {exc.msg}") from None
    names: list[str] = []
    _check_node(tree.body, names)
    return tree, tuple(dict.fromkeys(names))


def _check_node(node: ast.AST, names: list[str]) -> None:
    """Refuse any node but the allowed arithmetic, collecting the names read into `names`."""
    match node:
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
            _check_node(left, names)
            _check_node(right, names)
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _OPERATORS:
            _check_node(operand, names)
        case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(value, bool):
            pass
        case ast.Name(id=name):
            names.append(name)
        case ast.Call(func=ast.Name(id=name), args=args, keywords=keywords) if name in FUNCTIONS:
            low, high = _ARITY.get(name, (1, 1))
            if keywords or not low <= len(args) <= high:
                expected = str(low) if low == high else f"{low} to {high}"
                raise FormulaError(f"calculate_output: {name}() takes {expected} positional argument(s)")
            for arg in args:
                _check_node(arg, names)
        case ast.Call():
            raise FormulaError(
                f"calculate_output: {ast.unparse(node.func)!r} is not a function a formula may call "
                f"(those are {', '.join(FUNCTIONS)})"
            )
        case _:
            raise FormulaError(
                f"calculate_output: {ast.unparse(node)!r} is not allowed: a formula holds numbers, grader "
                f"names, + - * / ** ^, parentheses and the functions {', '.join(FUNCTIONS)}"
            )
