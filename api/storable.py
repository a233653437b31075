"""Text and numbers that no column can hold, found before a request reaches a route.

Postgres refuses NUL characters in text and neither backend stores a lone surrogate (it has no
UTF-8 form); no integer column holds more than 64 bits and JSON has no infinity. Anywhere in a
JSON body, a query parameter or a header, such a value is refused with a 422 naming where it is,
instead of failing in the database after validation passed.
"""

import json
import math
from typing import Any
from urllib.parse import parse_qsl

from api.errors import field_path

INT64 = (-(2**63), 2**63 - 1)
INT64_DIGITS = 19  # the most digits a 64-bit integer has


class OutOfRangeInt:
    """Stands in for a JSON integer outside the signed 64-bit range, so it is reported instead of parsed."""

    __slots__ = ("digits", "value")

    def __init__(self, digits: int, value: int | None) -> None:
        self.digits = digits
        self.value = value  # None when it has more digits than any 64-bit integer: never built


def parse_int64(text: str) -> int | OutOfRangeInt:
    """``parse_int`` hook of the JSON decoders: never builds a huge int (nor hits Python's digit limit)."""
    digits = len(text.lstrip("-"))
    if digits > INT64_DIGITS:
        return OutOfRangeInt(digits, None)
    value = int(text)
    return value if INT64[0] <= value <= INT64[1] else OutOfRangeInt(digits, value)


class _Unstorable:
    """A JSON number that was refused while parsing: what it is, for the message."""

    def __init__(self, description: str) -> None:
        self.description = description


def _parse_float(text: str) -> float | _Unstorable:
    value = float(text)
    if math.isinf(value):
        return _Unstorable(f"the number {text[:32]}{'…' if len(text) > 32 else ''} is out of the 64-bit "
                           "floating-point range")
    return value


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode"
    return None


def _walk(value: Any, parts: list[str | int]) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = text_problem(value)
        return (field_path(parts), problem) if problem else None
    if isinstance(value, _Unstorable):
        return field_path(parts), value.description
    if isinstance(value, OutOfRangeInt):
        if value.value is None:
            return field_path(parts), f"an integer of {value.digits} digits is out of the 64-bit range"
        return field_path(parts), f"the integer {value.value} is out of the 64-bit range"
    if isinstance(value, dict):
        for key, item in value.items():
            if problem := text_problem(key):
                return field_path(parts), f"a key {problem}"
            if found := _walk(item, [*parts, key]):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _walk(item, [*parts, i]):
                return found
    return None


def json_problem(body: bytes) -> tuple[str | None, str] | None:
    """(param, message) for the first unstorable value of a JSON body, or None (also for bodies that
    do not parse: the route's own parser reports those)."""
    try:
        document = json.loads(body, parse_int=parse_int64, parse_float=_parse_float)
    except UnicodeDecodeError as exc:  # the route's parser would only say "error parsing the body"
        return None, f"the JSON body is not valid {exc.encoding.upper()} (byte {exc.start})"
    except (ValueError, RecursionError):
        return None
    found = _walk(document, [])
    if found is None:
        return None
    param, problem = found
    return (param, f"{param}: {problem}") if param else (None, f"the JSON body {problem}")


def query_problem(query_string: bytes) -> tuple[str, str] | None:
    """(param, message) for the first query parameter holding a NUL character, or None."""
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if "\x00" in key or "\x00" in value:
            return key, f"query parameter {key!r} contains a NUL character (\\u0000), which cannot be stored"
    return None


def header_problem(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(param, message) for the first header holding a NUL character, or None."""
    for name, value in headers:
        if b"\x00" in name or b"\x00" in value:
            header = name.decode("latin-1")
            return header, f"header {header!r} contains a NUL character (\\u0000), which cannot be stored"
    return None
