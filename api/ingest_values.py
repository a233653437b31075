"""Which decoded values a stored dataset row may hold, and where in a row a value breaks the rule.

Rows are stored in a JSON column (JSON text on SQLite, JSONB on Postgres) and read back by clients
and trainers, so a value is refused at upload when some backend or reader would reject or change it:

- integers outside the signed 64-bit range, the limit of the service's other JSON inputs
  (``api.storable``): SQLite's JSON functions read them back as rounded floats, many clients round
  or refuse them, and Python refuses even to parse one of more than 4300 digits;
- floats that are not finite (``NaN``, ``Infinity``, ``1e999``): JSON has no spelling for them;
- strings (values or keys) holding NUL (U+0000), which Postgres text and JSONB refuse, or an
  unpaired UTF-16 surrogate such as ``"\\ud800"``, which is not Unicode and has no UTF-8 encoding;
- any other type (timestamps, bytes, decimals from a Parquet file).
"""

from __future__ import annotations

import json
import math

from api.storable import INT64, OutOfRangeInt, parse_int64, text_problem

INT64_MIN, INT64_MAX = INT64


def loads(text: str) -> object:
    """``json.loads`` with the 64-bit integer rule."""
    return json.loads(text, parse_int=parse_int64)


def decoder() -> json.JSONDecoder:
    """A JSON decoder with the 64-bit integer rule, for incremental ``raw_decode``."""
    return json.JSONDecoder(parse_int=parse_int64)


def unstorable(value: object, path: str = "") -> tuple[str | None, str] | None:
    """The first value of a decoded record that cannot be stored: ``(field path, problem)``, or None."""
    if isinstance(value, str):
        return _string_problem(value, path, "string")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return path or None, f"integer of {len(str(abs(value)))} digits does not fit in a signed 64-bit integer"
    if isinstance(value, OutOfRangeInt):
        return path or None, f"integer of {value.digits} digits does not fit in a signed 64-bit integer"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return path or None, f"number {value} is not finite (JSON has no NaN or Infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path or None, f"key of type {type(key).__name__} cannot be stored as JSON"
            where = f"{path}.{_shown(key)}" if path else _shown(key)
            problem = _string_problem(key, where, "key") or unstorable(item, where)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = unstorable(item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    return path or None, f"value of type {type(value).__name__} cannot be stored as JSON"


def _string_problem(text: str, path: str, what: str) -> tuple[str | None, str] | None:
    problem = text_problem(text)
    return (path or None, f"{what} {problem}") if problem else None


def _shown(key: str) -> str:
    # A path must never carry the bad character itself: it could not be encoded in the error body.
    return json.dumps(key)[1:-1] if text_problem(key) else key
