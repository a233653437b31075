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

Compiling, unlike matching, holds the GIL, and its time grows with the compiled program (and with
the square of the optional copies that ``x{0,n}`` unrolls to). So a pattern has at most
`MAX_PATTERN_CHARS` characters, unrolls to at most `MAX_EXPANSION` items (checked on its text,
before compiling) and compiles within `MAX_MEMORY` (else RE2 says "pattern too large"): compiling
any pattern takes about a tenth of a second at most. Matching a long text with a large pattern can
still take seconds when RE2 must fall back from its DFA to simulating the NFA; `worst_case_work`
tells callers when to bound a match with a deadline.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

MAX_PATTERN_CHARS = 2000
"""Longest pattern, in characters, literal or rendered from a row's template."""

MAX_EXPANSION = 3000
"""Most items a pattern may expand to once its counted repetitions are unrolled (see `expansion`)."""

MAX_MEMORY = 1 << 20
"""RE2's memory budget per pattern, compiled program and DFA cache together (RE2's default: 8 MiB)."""

QUICK_WORK = 50_000_000
"""Bound on `worst_case_work` under which a match is quick whatever the text (tens of milliseconds)."""


class PatternError(ValueError):
    """A pattern RE2 refuses: bad syntax, a feature it lacks (backreferences, lookaround), or too large."""


def _options(dot_all: bool) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the user's to hear about, not the server log's
    options.never_capture = True  # only whether it matches is used: no submatch bookkeeping
    options.dot_nl = dot_all
    # RE2's memory budget also caps the compiled program, and compiling (which holds the GIL) takes
    # time in proportion to it: 1 MiB allows ~87,000 instructions, compiled in about 0.2 s at worst.
    options.max_mem = MAX_MEMORY
    return options


_OPTIONS = {False: _options(False), True: _options(True)}


@lru_cache(maxsize=64)  # cheaper than the binding's own cache, which reads every option per call
def compile_pattern(pattern: str, *, dot_all: bool = False) -> Any:
    """Compile a pattern with RE2, or take it from the cache of recent patterns.

    Args:
        pattern: the regular expression, at most `MAX_PATTERN_CHARS` characters.
        dot_all: ``.`` matches a newline too, as the ``(?s)`` flag.

    Returns:
        The compiled pattern.

    Raises:
        PatternError: the pattern is too long, or RE2 refuses it (the message says why).
    """
    check_size(pattern)
    try:
        return re2.compile(pattern, _OPTIONS[dot_all])
    except re2.error as exc:
        raise PatternError(f"not a valid regular expression for RE2 (no backreferences or lookaround): "
                           f"{_reason(exc)}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate, from JSON such as "\ud800"
        raise PatternError(f"not a valid regular expression: {exc.reason} at position {exc.start}") from exc


def check_size(pattern: str) -> None:
    """Refuse a pattern too large to compile quickly, from its text alone (microseconds, no compiling).

    Args:
        pattern: the regular expression.

    Raises:
        PatternError: more than `MAX_PATTERN_CHARS` characters, or an `expansion` above `MAX_EXPANSION`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"a regular expression has at most {MAX_PATTERN_CHARS} characters")
    if expansion(pattern) > MAX_EXPANSION:
        raise PatternError(
            f"its counted repetitions unroll to more than {MAX_EXPANSION} items (a{{0,999}} is 999, "
            "(?:ab{2}){10} is 30): use *, + or smaller counts"
        )


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


def expansion(pattern: str) -> int:
    """How many items a pattern unrolls to: an upper bound computed from its text alone, in linear time.

    RE2 compiles ``x{0,n}`` to n nested optional copies of x, and the time it takes to compile (while
    it holds the GIL) grows with the square of such copies: ``a{0,99}`` written 100 times takes seconds.
    This bound is checked before compiling. Each literal, class or escape counts 1, a group the sum of
    its contents (all alternatives), and a counted repetition ``{m}``, ``{m,}`` or ``{m,n}``
    multiplies what it repeats by its largest count; ``*``, ``+`` and ``?`` add no copies.

    Args:
        pattern: the regular expression (need not be valid: a pattern RE2 refuses is refused anyway).

    Returns:
        The number of items, at least what RE2 will unroll.
    """
    groups = [0]  # running sums: the pattern's, then one per open group
    last = 0  # the size of the item just read, which a quantifier repeats
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("\\Q", i):  # a literal run up to \E: each character is an item
                end = pattern.find("\\E", i + 2)
                end = n if end == -1 else end
                groups[-1] += end - (i + 2)
                last, i = 1, end + 2
                continue
            i += 2
            if i - 1 < n and pattern[i - 1] in "pPx" and i < n and pattern[i] == "{":  # \p{Greek}, \x{41}
                close = pattern.find("}", i)
                i = n if close == -1 else close + 1
            elif i - 1 < n and pattern[i - 1] in "pP":  # \pL: one letter names the class
                i += 1
            last = 1
            groups[-1] += 1
        elif c == "[":
            i = _class_end(pattern, i)
            last = 1
            groups[-1] += 1
        elif c == "(":
            groups.append(0)
            last, i = 0, _group_body(pattern, i)
        elif c == ")" and len(groups) > 1:
            last = groups.pop()
            groups[-1] += last
            i += 1
        elif c == "{" and (count := _count(pattern, i)) is not None:
            times, i = count
            groups[-1] += last * (times - 1)  # `last` was counted once already
            last *= times
        elif c in "*+?":  # no copies; `last` stays, so a repetition of this one still counts in full
            i += 1
        else:
            last = 0 if c == "|" else 1
            groups[-1] += last
            i += 1
        if groups[-1] > 10 * MAX_EXPANSION:  # already far too large: stop counting
            break
    return sum(groups)


def _group_body(pattern: str, i: int) -> int:
    """Index of the first item of the group opening at `i`, past ``?:``, ``?P<name>`` or ``?i:``."""
    j = i + 1
    if not pattern.startswith("?", j):
        return j
    if pattern.startswith("?P<", j):
        close = pattern.find(">", j)
        return len(pattern) if close == -1 else close + 1
    while j < len(pattern) and pattern[j] not in ":)":
        j += 1
    return j + 1 if pattern.startswith(":", j) else j  # a ')' here ends a flags-only group such as (?i)


def _class_end(pattern: str, i: int) -> int:
    """Index just past the character class opening at `i` (a ']' first in it is a member)."""
    j = i + 1
    if pattern.startswith("^", j):
        j += 1
    if pattern.startswith("]", j):
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _count(pattern: str, i: int) -> tuple[int, int] | None:
    """The largest count of a ``{m}``, ``{m,}`` or ``{m,n}`` at `i` and the index past it; None: a literal '{'."""
    close = pattern.find("}", i)
    if close == -1:
        return None
    low, comma, high = pattern[i + 1 : close].partition(",")
    if not low.isdigit() or (high and not high.isdigit()) or not low.isascii() or not high.isascii():
        return None
    return max(int(low), int(high) if high else 0, 1), close + 1


def worst_case_work(pattern: str, text: str, *, dot_all: bool = False) -> int:
    """An upper bound on the work of matching `pattern` against `text`: program size × text bytes.

    RE2 runs a DFA when it can, in time linear in the text alone; when a pattern's DFA grows past
    its memory budget it falls back to simulating the NFA, whose time is linear in the text times
    the compiled program's size. A pattern may compile to ~87,000 instructions (`MAX_MEMORY`):
    against a 100,000-character text that is seconds of work, which callers may bound with a deadline.

    Args:
        pattern: the regular expression.
        text: the text it would be matched against.
        dot_all: as for `search`.

    Returns:
        ``programsize × 4·len(text)`` (a UTF-8 character is at most 4 bytes).

    Raises:
        PatternError: RE2 refuses the pattern.
    """
    return compile_pattern(pattern, dot_all=dot_all).programsize * 4 * (len(text) + 1)


def _utf8(text: str) -> bytes:
    # RE2 reads UTF-8. A lone surrogate (from JSON such as "\ud800") has no UTF-8 form: encoded as
    # is, it is an invalid sequence that RE2 steps over as one unknown character rather than failing.
    return text.encode("utf-8", "surrogatepass")


def _reason(exc: re2.error) -> str:
    reason = exc.args[0] if exc.args else "refused"
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
