"""Regular expressions from reward specs and prompt rows, compiled and matched by RE2 (torch-free).

These patterns are user input, and a templated one comes from a dataset row. A backtracking engine
such as Python's ``re`` can take exponential time on them (``(a+)+$`` against ``"a" * 30 + "!"``:
each extra character doubles the work) while holding the GIL, which stalls every thread of the
process. RE2 (https://github.com/google/re2/wiki/Syntax) matches in time linear in the text, bounds
the memory of each pattern, and releases the GIL while it matches. What it gives up is what needs
backtracking: backreferences (``\\1``) and lookaround (``(?=``, ``(?!``, ``(?<=``, ``(?<!``), which
it refuses with a message that `PatternError` carries.

The syntax is otherwise Python's for what reward specs use: classes, quantifiers, groups and named
groups ``(?P<name>…)``, inline flags ``(?i)`` (case), ``(?s)`` (``.`` matches a newline) and
``(?m)`` (``^``/``$`` at line ends). Differences worth knowing: ``\\d``, ``\\w``, ``\\s`` and
``\\b`` are ASCII (``\\pL``, ``\\p{Nd}``, ``\\p{Greek}`` are the Unicode classes); without
``(?m)``, ``$`` matches only at the very end of the text, not before a final newline; the end of
the text is ``\\z`` (Python's ``\\Z`` is refused); a repetition count is at most 1000.
"""

from __future__ import annotations

from typing import Any

import re2

MAX_PATTERN_CHARS = 2000
"""Longest pattern, in characters, literal or rendered from a row's template."""


class PatternError(ValueError):
    """A pattern RE2 refuses: bad syntax, a feature it lacks (backreferences, lookaround), or too large."""


def _options(dot_all: bool) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the user's to hear about, not the server log's
    options.never_capture = True  # only whether it matches is used: no submatch bookkeeping
    options.dot_nl = dot_all
    return options


_OPTIONS = {False: _options(False), True: _options(True)}


def compile_pattern(pattern: str, *, dot_all: bool = False) -> Any:
    """Compile a pattern with RE2 (compiled patterns are cached by the binding).

    Args:
        pattern: the regular expression, at most `MAX_PATTERN_CHARS` characters.
        dot_all: ``.`` matches a newline too, as the ``(?s)`` flag.

    Returns:
        The compiled pattern.

    Raises:
        PatternError: the pattern is too long, or RE2 refuses it (the message says why).
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"a regular expression has at most {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS[dot_all])
    except re2.error as exc:
        raise PatternError(f"not a valid regular expression for RE2 (no backreferences or lookaround): "
                           f"{_reason(exc)}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate, from JSON such as "\ud800"
        raise PatternError(f"not a valid regular expression: {exc.reason} at position {exc.start}") from exc


def search(pattern: str, text: str, *, dot_all: bool = False) -> bool:
    """Whether the pattern matches somewhere in the text (as ``re.search``), in linear time.

    Args:
        pattern: the regular expression.
        text: the text to search.
        dot_all: ``.`` matches a newline too.

    Returns:
        True when some substring matches.

    Raises:
        PatternError: RE2 refuses the pattern.
    """
    return compile_pattern(pattern, dot_all=dot_all).search(_utf8(text)) is not None


def fullmatch(pattern: str, text: str, *, dot_all: bool = False) -> bool:
    """Whether the pattern matches the whole text (as ``re.fullmatch``), in linear time.

    Args:
        pattern: the regular expression.
        text: the text to match.
        dot_all: ``.`` matches a newline too.

    Returns:
        True when the whole text matches.

    Raises:
        PatternError: RE2 refuses the pattern.
    """
    return compile_pattern(pattern, dot_all=dot_all).fullmatch(_utf8(text)) is not None


def _utf8(text: str) -> bytes:
    # RE2 reads UTF-8. A lone surrogate (from JSON such as "\ud800") has no UTF-8 form: encoded as
    # is, it is an invalid sequence that RE2 steps over as one unknown character rather than failing.
    return text.encode("utf-8", "surrogatepass")


def _reason(exc: re2.error) -> str:
    reason = exc.args[0] if exc.args else "refused"
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
