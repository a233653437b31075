"""Final answers of math problems compared numerically or symbolically, with Hugging Face's math-verify (torch-free).

`math-verify` (with ``latex2sympy2_extended`` and SymPy) extracts answers from text (``\\boxed{...}``,
"the answer is ...", the last number or LaTeX expression) and decides equality (``1/2`` = ``0.5`` =
``\\frac{1}{2}``, ``2\\sqrt{2}`` = ``\\sqrt{8}``, ``1,000`` = ``1000``). This module only picks the
part of the text that holds the answer and keeps SymPy away from answers too costly to compare.

Time: math-verify's own timeouts use ``signal.alarm``, which works only in the main thread, and the
graders call reward functions in a thread of their own under `trainers.spec.graders.GRADER_TIMEOUT_S`
(`trainers.spec.deadlines`). So those timeouts are off here and the graders' deadline bounds each call.
A deadline cannot interrupt C code that holds the GIL, such as big-integer arithmetic: an answer whose
exact value would have more than `MAX_DIGITS` digits (``9^{9^{9^{9}}}``, ``10^{10^{10}}!``) is never
compared, and only the last `TAIL_CHARS` characters of a completion are searched (math-verify's
regular expressions grow worse than linearly with the text).

math-verify is imported on first use, so importing this module (the API does) stays cheap.
"""

from __future__ import annotations

import math
import re
from typing import Any

TAIL_CHARS = 2000
"""A completion's final answer is searched for in its last this many characters (after ``####`` or
the last ``\\boxed``, in as many characters from there)."""

MAX_DIGITS = 10_000
"""An answer whose exact value may need more digits than this is not compared (see the module docstring)."""

GSM8K_MARKER = "####"
"""GSM8K's answers end with ``#### <number>``; so may completions trained on them."""

_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")  # an unescaped $, \( or \[ (a short fixed pattern: linear)
_COMBINATORIAL = frozenset({"factorial", "factorial2", "subfactorial", "binomial", "gamma", "RisingFactorial",
                            "FallingFactorial"})


class AnswerTooLarge(ValueError):
    """An answer's exact value could need more than `MAX_DIGITS` digits: comparing it could stall the process."""


def reference_text(value: str) -> str:
    """The reference answer in a dataset field: GSM8K's ``#### N``, else MATH's last ``\\boxed``, else the whole field.

    Args:
        value: the field, e.g. GSM8K's worked solution ending ``#### 18``, a MATH solution with its
            answer in ``\\boxed{...}``, ``"0.5"`` or ``"\\frac{1}{2}"``.

    Returns:
        What follows the last ``####``; else the text from the last ``\\boxed`` on; else the field;
        stripped, at most `TAIL_CHARS` characters.
    """
    if GSM8K_MARKER in value:
        value = value.rsplit(GSM8K_MARKER, 1)[1]
    elif "\\boxed" in value:
        value = value[value.rfind("\\boxed"):]
    return value.strip()[:TAIL_CHARS]


def answer_region(completion: str) -> str:
    """The part of a completion that holds its final answer.

    Args:
        completion: the sampled completion.

    Returns:
        The first line after its last ``####``; else its text from the last ``\\boxed`` on; else its end;
        at most `TAIL_CHARS` characters.
    """
    if GSM8K_MARKER in completion:
        after = completion.rsplit(GSM8K_MARKER, 1)[1].strip()
        return after.split("\n", 1)[0][:TAIL_CHARS]
    boxed = completion.rfind("\\boxed")
    if boxed >= 0:
        return completion[boxed:boxed + TAIL_CHARS]
    return completion[-TAIL_CHARS:]


def parse_reference(text: str) -> list[Any]:
    """Parse a reference answer: a number, a fraction, or a LaTeX expression with or without ``$`` delimiters.

    Args:
        text: the answer text (see `reference_text`).

    Returns:
        math-verify's parse: SymPy values, then the matched string.

    Raises:
        ValueError: nothing in `text` is a number or an expression.
        AnswerTooLarge: the answer is too costly to compare.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    # A bare LaTeX answer (``2\sqrt{2}``) needs delimiters, or math-verify reads only its first number.
    delimited = bool(_DELIMITER.search(text)) or "\\boxed" in text
    targets = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = [] if delimited else parse(f"${text}$", targets, parsing_timeout=None)
    parsed = parsed or parse(text, targets, parsing_timeout=None)
    if not parsed:
        raise ValueError(f"the reference answer {text[:80]!r} is not a number or a math expression")
    _check_size(parsed)
    return parsed


def parse_completion(completion: str) -> list[Any]:
    """Parse a completion's final answer (``#### N``, ``\\boxed{...}``, "the answer is ...", else the last number).

    Args:
        completion: the sampled completion.

    Returns:
        math-verify's parse of `answer_region` (empty when it holds no answer).

    Raises:
        AnswerTooLarge: the answer is too costly to compare.
    """
    from math_verify import parse

    parsed = parse(answer_region(completion), parsing_timeout=None)
    _check_size(parsed)
    return parsed


def answers_match(reference: str, completion: str) -> bool:
    """Whether a completion's final answer equals the reference, numerically or symbolically.

    Args:
        reference: the reference answer field (GSM8K solution, number or LaTeX).
        completion: the sampled completion.

    Returns:
        True when the answers are equal; False when they differ, when the completion has no answer,
        or when its answer is too costly to compare.

    Raises:
        ValueError: the reference holds no answer, or is too costly to compare.
    """
    from math_verify import verify

    gold = parse_reference(reference_text(reference))
    try:
        predicted = parse_completion(completion)
    except AnswerTooLarge:
        return False
    return bool(predicted) and verify(gold, predicted, timeout_seconds=None)


def _check_size(parsed: list[Any]) -> None:
    for value in parsed:
        if not isinstance(value, str) and _digits(value) > MAX_DIGITS:
            raise AnswerTooLarge(f"the answer {str(value)[:80]!r} is too large to compare")


def _digits(expr: Any) -> float:
    """An upper bound on the decimal digits of `expr`'s exact value (numerator or denominator), from its tree.

    Constants and symbols count as one digit; the bound never evaluates anything large itself.
    """
    args = getattr(expr, "args", ())
    if getattr(expr, "is_Rational", False):  # integers too
        return max(int(expr.p).bit_length(), int(expr.q).bit_length()) * math.log10(2) + 1
    if getattr(expr, "is_Pow", False):
        return _magnitude(args[1]) * _digits(args[0])
    if type(expr).__name__ in _COMBINATORIAL:
        largest = max((_magnitude(a) for a in args), default=0.0)
        return largest * math.log10(largest + 2) + 1
    return sum(_digits(a) for a in args) + 1


def _magnitude(expr: Any) -> float:
    """An upper bound on ``|expr|`` (numerator or denominator, at least 1); infinite past a float's range."""
    if getattr(expr, "is_Rational", False):
        largest = max(abs(int(expr.p)), abs(int(expr.q)))
        return float(largest) if largest.bit_length() < 1000 else math.inf
    digits = _digits(expr)
    return math.inf if digits > 300 else 10.0**digits
