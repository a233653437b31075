"""Chat rows (supervised fine-tuning) and telling a row's dataset kind from the row itself (`detect_kind`).

A chat row is either

- ``{"messages": [M, ...], **extra}``: an OpenAI chat row. M is ``{"role": "system" | "user" |
  "assistant" | "tool", "content": str, **extra}``; an assistant message may carry ``"weight": 0 | 1``
  (OpenAI's fine-tuning format), 0 leaving that message out of the loss; or
- ``{"prompt": str, "completion": str, **extra}``: the model learns the completion given the prompt.
  The conversational form (TRL's), ``{"prompt": [M, ...], "completion": [assistant M, ...]}``,
  becomes a messages row whose prompt assistant messages (few-shot examples) carry ``weight: 0``,
  so only the completion is trained on, as for strings.

Decisions:
- At least one assistant message must have non-empty content and a weight other than 0, so that every
  row has something to learn (a named error otherwise: it is almost always a broken export).
- ``weight`` is accepted on assistant messages only and must be 0 or 1 (an integral float such as 1.0
  from a columnar file too); it is stored as an int.
- Messages after the last assistant message are accepted: with ``assistant_only_loss`` off they are
  trained on, with it on they carry no loss.
- OpenAI's top-level ``tools`` and ``parallel_tool_calls`` are dropped, as in preference rows: the
  trainers render conversations with the model's chat template, without tools. Other extra keys stay.
- A prompt/completion row's prompt may be ``""`` (unconditional generation); its completion may not.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainers.spec.rows import CHAT_ROLES, DatasetKind, RowError, json_type, key_list, messages, require_object

_DROPPED_KEYS = ("tools", "parallel_tool_calls")
_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


def normalize_chat(obj: object) -> dict:
    """Normalise a chat row (messages, or prompt and completion) for supervised fine-tuning.

    Args:
        obj: the decoded row.

    Returns:
        ``{"messages": [...], **extra}`` or ``{"prompt": str, "completion": str, **extra}``, as
        the module docstring describes; the input is not modified.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field.
    """
    row = require_object(obj)
    if "messages" in row:
        return _normalize_messages(row)
    if "prompt" in row or "completion" in row:
        return _normalize_completion(row)
    raise RowError(f"unknown chat row shape: expected key messages, or prompt and completion; got {key_list(row)}")


def detect_kind(row: Mapping) -> DatasetKind | None:
    """Tell a row's dataset kind from its keys and the role of its last message, without validating it.

    Args:
        row: one decoded row.

    Returns:
        ``"preference"`` for OpenAI's input/preferred_output/non_preferred_output or chosen and
        rejected (with or without a prompt); ``"feedback"`` for prompt and completion with a boolean
        ``label``; ``"chat"`` for messages ending with an assistant message, or prompt and completion
        (without a boolean label); ``"prompt"`` for messages ending with a user message, or a prompt
        without completion, chosen or rejected; None when the row is none of these.
    """
    if not isinstance(row, Mapping):
        return None
    if any(key in row for key in _PREFERENCE_KEYS) or ("chosen" in row and "rejected" in row):
        return "preference"
    if "messages" in row:
        value = row["messages"]
        last = value[-1] if isinstance(value, list) and value else None
        role = last.get("role") if isinstance(last, Mapping) else None
        return {"assistant": "chat", "user": "prompt"}.get(role) if isinstance(role, str) else None
    if "prompt" in row and "completion" in row:
        return "feedback" if isinstance(row.get("label"), bool) else "chat"
    if "prompt" in row and "chosen" not in row and "rejected" not in row:
        return "prompt"
    return None


def _normalize_messages(row: dict) -> dict:
    """Validate an OpenAI chat row's messages and their weights."""
    value = row["messages"]
    if not isinstance(value, list):
        raise RowError(f"must be a list of messages, got {json_type(value)}", field="messages")
    checked = messages(value, "messages", CHAT_ROLES)
    for i, message in enumerate(checked):
        if "weight" in message:
            message["weight"] = _weight(message, f"messages[{i}].weight")
    trained = [m for m in checked if m["role"] == "assistant" and m.get("weight", 1) and m["content"].strip()]
    if not trained:
        has_assistant = any(m["role"] == "assistant" for m in checked)
        raise RowError(
            "must contain at least one assistant message with non-empty content and weight 1 (or no weight)"
            if has_assistant
            else "must contain at least one assistant message",
            field="messages",
        )
    return {key: v for key, v in row.items() if key not in _DROPPED_KEYS} | {"messages": checked}


def _weight(message: dict, field: str) -> int:
    """An assistant message's loss weight as 0 or 1."""
    if message["role"] != "assistant":
        raise RowError(f"is allowed on assistant messages only, not on a {message['role']!r} message", field=field)
    weight = message["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        shown = repr(weight) if json_type(weight) == "number" else json_type(weight)
        raise RowError(f"must be 0 or 1 (got {shown})", field=field)
    return int(weight)


def _normalize_completion(row: dict) -> dict:
    """Validate a prompt/completion row of two strings, or turn one of two message lists into a messages row."""
    for key in ("prompt", "completion"):
        if key not in row:
            raise RowError(f"missing required key {key!r} (got {key_list(row)})", field=key)
    if isinstance(row["prompt"], list) and isinstance(row["completion"], list):
        return _conversational_completion(row)
    for key in ("prompt", "completion"):
        if not isinstance(row[key], str):
            raise RowError(f"must be a string (or both prompt and completion lists of messages), got "
                           f"{json_type(row[key])}", field=key)  # fmt: skip
    if not row["completion"].strip():
        raise RowError("must not be empty", field="completion")
    return dict(row)


def _conversational_completion(row: dict) -> dict:
    """A messages row of a conversational prompt/completion row: the prompt's assistant turns are not trained."""
    if not row["prompt"]:
        raise RowError("must contain at least one message", field="prompt")
    prompt = messages(row["prompt"], "prompt", CHAT_ROLES)
    completion = messages(row["completion"], "completion", CHAT_ROLES)
    for i, message in enumerate(completion):
        if message["role"] != "assistant":
            raise RowError(f"must be 'assistant' in a completion (got {message['role']!r})",
                           field=f"completion[{i}].role")  # fmt: skip
        if "weight" in message:
            message["weight"] = _weight(message, f"completion[{i}].weight")
    if not any(m.get("weight", 1) and m["content"].strip() for m in completion):
        raise RowError("must contain at least one assistant message with non-empty content and weight 1 "
                       "(or no weight)", field="completion")  # fmt: skip
    prompt = [m | {"weight": 0} if m["role"] == "assistant" else m for m in prompt]
    extra = {key: v for key, v in row.items() if key not in ("prompt", "completion", *_DROPPED_KEYS)}
    return {"messages": prompt + completion, **extra}
