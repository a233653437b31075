"""Canonical dataset rows: validation and normalisation of preference, prompt, text and chat records.

The API validates every uploaded row with these functions and the trainers consume what they return,
so both sides agree on one shape per dataset kind:

- preference: ``{"prompt": P, "chosen": R, "rejected": R, **extra}`` where either P and R are all
  strings, or P is a list of messages and R is a list of messages with at least one assistant turn.
  Rows are accepted as common exports write them: explicit prompts, the OpenAI format, whole
  dialogues without a prompt (hh-rlhf, plain or as messages) and a string prompt with message-list
  responses (UltraFeedback).
- prompt: ``{"prompt": P, **extra}`` with P a non-empty string or a non-empty list of messages;
  the extra keys (e.g. ``answer``) are passed to graders. OpenAI's reinforcement rows,
  ``{"messages": [...], **extra}`` with the conversation to complete ending in a user message,
  become ``{"prompt": messages, **extra}``.
- text: ``{"text": T, **extra}``, PPO-ptx's pretraining text.
- chat: supervised fine-tuning rows, messages or prompt and completion (`trainers.spec.chat_rows`).
- feedback: KTO's ``{"prompt", "completion", "label": bool}`` (`trainers.spec.feedback_rows`).

A message is ``{"role": "system" | "user" | "assistant", "content": str, **extra}`` (chat rows also
take ``"tool"``; ``"developer"`` is read as ``"system"``, `trainers.spec.rows`). `detect_kind` tells
a row's kind from the row.

Decisions:
- A plain preference prompt may be ``""``: the text being compared lives in chosen and rejected, so
  an unconditional pair still carries its full signal. A conversational prompt needs at least one
  message, since the chat template renders it. A prompt-dataset prompt may not be empty in either
  form, since it is the only input the policy generates from.
- A row without ``prompt`` (the "implicit prompt" layout) takes as its prompt what chosen and
  rejected share at the start, as TRL's ``extract_prompt`` does (`trainers.spec.implicit_prompts`;
  plain dialogues are cut after the last turn marker ``Assistant:`` both share). The trainers read
  only the assistant turns of a response, so a response taken out of a whole conversation (or given beside a
  string prompt) may hold only assistant messages: a user turn there would be silently lost, so it
  is an error instead.
- A string prompt with message-list responses becomes one user message; a response's leading user
  turn equal to it repeats the prompt (UltraFeedback) and is dropped. When both responses repeat it,
  the messages they go on to share join the prompt too.
- An empty or whitespace-only response (a plain ``chosen``/``rejected``, or a message list whose
  assistant turns are all blank) is an error: it is almost always a broken export.
- ``chosen`` identical to ``rejected`` is accepted. Such a pair gives no gradient signal (the margin is
  zero whatever the weights), but ties are common in real preference exports, and rejecting one would
  fail the whole upload for legal data.
- In the OpenAI format, keys of ``input`` other than ``messages`` (``tools``, ``parallel_tool_calls``)
  are dropped: the trainers render conversations with the model's chat template, without tools.
- A prompt row with both ``prompt`` and ``messages`` is read by its ``prompt``; ``messages`` is then an
  extra key like any other.
"""

from __future__ import annotations

from typing import Literal, get_args

from trainers.spec.chat_rows import detect_kind, normalize_chat
from trainers.spec.feedback_rows import normalize_feedback
from trainers.spec.implicit_prompts import shared_message_count, shared_text_length
from trainers.spec.rows import ROLES, DatasetKind, RowError, messages
from trainers.spec.rows import json_type as _json_type
from trainers.spec.rows import key_list as _key_list
from trainers.spec.rows import require_object as _require_object

__all__ = ["ROLES", "DatasetKind", "RowError", "detect_kind", "normalize_chat", "normalize_feedback",
           "normalize_preference", "normalize_prompt", "normalize_row", "normalize_text"]

DATASET_KINDS: tuple[DatasetKind, ...] = get_args(DatasetKind)
_PAIR_KEYS = ("prompt", "chosen", "rejected")
_OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
_OPENAI_TO_CANONICAL = {"preferred_output": "chosen", "non_preferred_output": "rejected"}
_FORM_NAMES = {"text": "a string", "messages": "a list of messages"}


def normalize_row(kind: DatasetKind, obj: object) -> dict:
    """Validate one decoded row of a dataset and return its canonical form.

    Args:
        kind: the dataset kind, ``"preference"``, ``"prompt"``, ``"text"``, ``"chat"`` or ``"feedback"``.
        obj: the decoded row (normally a dict from JSON, CSV or Parquet).

    Returns:
        A new dict in the canonical form of ``kind``; the input is not modified.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field, or is None when the row
            as a whole is wrong (not an object, unknown shape).
    """
    if kind == "preference":
        return normalize_preference(obj)
    if kind == "prompt":
        return normalize_prompt(obj)
    if kind == "text":
        return normalize_text(obj)
    if kind == "chat":
        return normalize_chat(obj)
    if kind == "feedback":
        return normalize_feedback(obj)
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")


def normalize_preference(obj: object) -> dict:
    """Normalise a plain, conversational or OpenAI-format preference row.

    Args:
        obj: the decoded row.

    Returns:
        ``{"prompt": P, "chosen": R, "rejected": R, **extra}``: P and R are strings for plain rows;
        for conversational and OpenAI rows P is a list of messages and R a list of messages holding at
        least one assistant message with non-empty content. Top-level extra keys are kept.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field.
    """
    row = _require_object(obj)
    # chosen/rejected win over the OpenAI keys so that a plain row with an extra "input" column
    # is still read as a plain row.
    if "chosen" in row or "rejected" in row:
        return _normalize_pair(row)
    if any(key in row for key in _OPENAI_KEYS):
        return _normalize_openai(row)
    if "prompt" in row:
        return _normalize_pair(row)
    raise RowError(
        "unknown preference row shape: expected keys prompt, chosen, rejected "
        "or input, preferred_output, non_preferred_output; got "
        + _key_list(row)
    )


def normalize_prompt(obj: object) -> dict:
    """Normalise a prompt row (PPO/GRPO), keeping the keys graders read.

    Args:
        obj: the decoded row.

    Returns:
        ``{"prompt": P, **extra}`` with P a non-empty string or a non-empty list of messages;
        every other key is kept as-is.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field.
    """
    row = _require_object(obj)
    if "prompt" not in row and "messages" in row:
        return _normalize_openai_prompt(row)
    if "prompt" not in row:
        raise RowError(f"missing required key 'prompt' (got {_key_list(row)})", field="prompt")
    prompt = row["prompt"]
    if _form(prompt, "prompt") == "text":
        if not prompt.strip():
            raise RowError("must not be empty", field="prompt")
        return dict(row)
    return {**row, "prompt": _prompt_messages(prompt, "prompt")}


def _normalize_openai_prompt(row: dict) -> dict:
    """Map an OpenAI reinforcement row, the conversation to complete in ``messages``, onto a prompt row."""
    value = row["messages"]
    if not isinstance(value, list):
        raise RowError(f"must be a list of messages, got {_json_type(value)}", field="messages")
    prompt = _prompt_messages(value, "messages")
    if prompt[-1]["role"] != "user":
        raise RowError(f"must end with a user message, the turn the policy answers (got {prompt[-1]['role']!r})",
                       field=f"messages[{len(prompt) - 1}].role")
    return {"prompt": prompt, **{key: v for key, v in row.items() if key != "messages"}}


def normalize_text(obj: object) -> dict:
    """Normalise a plain-text row (PPO-ptx's pretraining data).

    Args:
        obj: the decoded row.

    Returns:
        ``{"text": T, **extra}`` with T a non-empty string.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field.
    """
    row = _require_object(obj)
    if "text" not in row:
        raise RowError(f"missing required key 'text' (got {_key_list(row)})", field="text")
    if not isinstance(row["text"], str) or not row["text"].strip():
        raise RowError("must be a non-empty string", field="text")
    return dict(row)


def _normalize_pair(row: dict) -> dict:
    """Validate a plain or conversational row with chosen/rejected, its prompt explicit or implicit."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(f"missing required key {key!r}", field=key)
    if "prompt" not in row:
        return _normalize_implicit(row)
    form = _form(row["prompt"], "prompt")
    if form == "text" and isinstance(row["chosen"], list) and isinstance(row["rejected"], list):
        return _normalize_text_prompt_conversations(row)
    for key in ("chosen", "rejected"):
        other = _form(row[key], key)
        if other != form:
            raise RowError(
                f"is {_FORM_NAMES[other]} but prompt is {_FORM_NAMES[form]}; "
                "use one form for prompt, chosen and rejected",
                field=key,
            )
    if form == "text":
        for key in ("chosen", "rejected"):
            if not row[key].strip():
                raise RowError("must not be empty", field=key)
        return dict(row)
    return {
        **row,
        "prompt": _prompt_messages(row["prompt"], "prompt"),
        "chosen": _response(row["chosen"], "chosen"),
        "rejected": _response(row["rejected"], "rejected"),
    }


def _normalize_implicit(row: dict) -> dict:
    """Take the prompt of a row without one from what its chosen and rejected share at the start."""
    form = _form(row["chosen"], "chosen")
    other = _form(row["rejected"], "rejected")
    if other != form:
        raise RowError(
            f"is {_FORM_NAMES[other]} but chosen is {_FORM_NAMES[form]}; use one form for chosen and rejected",
            field="rejected",
        )
    if form == "text":
        chosen, rejected = row["chosen"], row["rejected"]
        k = shared_text_length(chosen, rejected)
        for key, response in (("chosen", chosen[k:]), ("rejected", rejected[k:])):
            if not response.strip():
                raise RowError(
                    "has no response after the prompt it shares with the other side (the last turn has no reply)",
                    field=key,
                )
        return {"prompt": chosen[:k], **row, "chosen": chosen[k:], "rejected": rejected[k:]}
    chosen, rejected = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
    n = shared_message_count(chosen, rejected)
    if n == 0:
        raise RowError("missing, and chosen and rejected share no leading message to take it from", field="prompt")
    return {
        "prompt": chosen[:n],
        **row,
        "chosen": _extracted_response(chosen, n, "chosen"),
        "rejected": _extracted_response(rejected, n, "rejected"),
    }


def _normalize_text_prompt_conversations(row: dict) -> dict:
    """Make a string prompt a user turn, dropping the copy of it that opens whole conversations."""
    text = row["prompt"]
    if not text.strip():
        raise RowError("must not be empty when chosen and rejected are lists of messages", field="prompt")
    chosen, rejected = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
    skip = {key: int(_opens_with(messages, text)) for key, messages in (("chosen", chosen), ("rejected", rejected))}
    prompt = [{"role": "user", "content": text}]
    if skip["chosen"] and skip["rejected"]:
        # Both sides are the whole conversation: later turns they share belong to the prompt as well.
        prompt = [chosen[0], *chosen[1 : 1 + shared_message_count(chosen[1:], rejected[1:])]]
        skip = {"chosen": len(prompt), "rejected": len(prompt)}
    return {
        **row,
        "prompt": prompt,
        "chosen": _extracted_response(chosen, skip["chosen"], "chosen"),
        "rejected": _extracted_response(rejected, skip["rejected"], "rejected"),
    }


def _opens_with(messages: list[dict], text: str) -> bool:
    """Whether a conversation starts with a user turn saying ``text`` (leading/trailing blanks aside)."""
    return bool(messages) and messages[0]["role"] == "user" and messages[0]["content"].strip() == text.strip()


def _extracted_response(messages: list[dict], start: int, field: str) -> list[dict]:
    """The validated messages after the prompt, which may only be assistant turns, one of them non-empty."""
    response = messages[start:]
    for i, message in enumerate(response, start):
        if message["role"] != "assistant":
            raise RowError(
                f"is {message['role']!r} after the prompt: where the prompt is implicit or a string, a response "
                "may hold only assistant messages, since the trainers read only those (whole conversations "
                "should first differ at an assistant turn)",
                field=f"{field}[{i}].role",
            )
    if not any(m["content"].strip() for m in response):
        raise RowError("must contain at least one assistant message with non-empty content", field=field)
    return response


def _normalize_openai(row: dict) -> dict:
    """Map an OpenAI preference row onto the conversational canonical form."""
    if "prompt" in row:
        raise RowError("cannot be combined with the OpenAI keys input/preferred_output", field="prompt")
    for key in _OPENAI_KEYS:
        if key not in row:
            raise RowError(f"missing required key {key!r}", field=key)
    source = row["input"]
    if not isinstance(source, dict):
        raise RowError(f"must be an object with 'messages', got {_json_type(source)}", field="input")
    if "messages" not in source:
        raise RowError("missing required key 'messages'", field="input.messages")
    if not isinstance(source["messages"], list):
        raise RowError(
            f"must be a list of messages, got {_json_type(source['messages'])}", field="input.messages"
        )
    extra = {key: value for key, value in row.items() if key not in _OPENAI_KEYS}
    canonical = {"prompt": _prompt_messages(source["messages"], "input.messages")}
    for key, target in _OPENAI_TO_CANONICAL.items():
        if not isinstance(row[key], list):
            raise RowError(f"must be a list of messages, got {_json_type(row[key])}", field=key)
        canonical[target] = _response(row[key], key)
    return {**canonical, **extra}


def _form(value: object, field: str) -> Literal["text", "messages"]:
    """Say whether a prompt/response value is plain text or a message list."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "messages"
    raise RowError(f"must be a string or a list of messages, got {_json_type(value)}", field=field)


def _response(value: list, field: str) -> list[dict]:
    """Validate a response message list, which must hold a non-empty assistant turn."""
    messages = _messages(value, field)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RowError("must contain at least one assistant message with non-empty content", field=field)
    return messages


def _prompt_messages(value: list, field: str) -> list[dict]:
    """Validate a conversational prompt, which needs at least one message."""
    if not value:
        raise RowError("must contain at least one message", field=field)
    return _messages(value, field)


def _messages(value: list, field: str) -> list[dict]:
    """Validate a list of system/user/assistant messages."""
    return messages(value, field)
