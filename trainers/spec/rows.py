"""What every dataset kind's row validation shares: the row error, messages, and how values are named.

`trainers.spec.formats` (preference, prompt, text), `trainers.spec.chat_rows` (chat) and
`trainers.spec.feedback_rows` (feedback) build on it.

Decisions:
- A message's role ``developer`` (OpenAI's newer name for the system prompt) becomes ``system``: chat
  templates know ``system`` only.
- Extra message keys whose value is ``None`` are dropped: columnar files (Parquet) fill absent struct
  fields with null, and a ``"name": None`` would otherwise reach the chat template.
"""

from __future__ import annotations

from typing import Literal

DatasetKind = Literal["preference", "prompt", "text", "chat", "feedback"]
ROLES = ("system", "user", "assistant")
CHAT_ROLES = (*ROLES, "tool")
_ROLE_ALIASES = {"developer": "system"}


class RowError(ValueError):
    """A dataset row that does not match its kind; ``field`` is a dotted path such as ``chosen[0].role``."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.message = message
        self.field = field


def messages(value: list, field: str, roles: tuple[str, ...] = ROLES) -> list[dict]:
    """Validate a list of messages and return shallow copies of them."""
    return [message(item, f"{field}[{i}]", roles) for i, item in enumerate(value)]


def message(item: object, field: str, roles: tuple[str, ...] = ROLES) -> dict:
    """Validate one ``{"role", "content"}`` message whose role is one of `roles`."""
    if not isinstance(item, dict):
        raise RowError(f"must be a message object, got {json_type(item)}", field=field)
    role = _ROLE_ALIASES.get(item.get("role"), item.get("role")) if isinstance(item.get("role"), str) else None
    if role not in roles:
        shown = "missing" if "role" not in item else repr(item["role"])
        raise RowError(f"must be one of {', '.join(roles)} (got {shown})", field=f"{field}.role")
    content = item.get("content")
    if not isinstance(content, str):
        shown = "missing" if "content" not in item else json_type(content)
        raise RowError(f"must be a string (got {shown})", field=f"{field}.content")
    return {key: role if key == "role" else value for key, value in item.items() if value is not None}


def require_object(obj: object) -> dict:
    """Reject rows that are not JSON objects."""
    if not isinstance(obj, dict):
        raise RowError(f"row must be a JSON object, got {json_type(obj)}")
    return obj


def key_list(row: dict) -> str:
    """List a row's keys for an error message, capped so a wide row stays readable."""
    keys = sorted(map(str, row))
    shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
    return shown or "no keys"


def json_type(value: object) -> str:
    """Name a decoded value's type the way a JSON author would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
