"""The items a reward model scores, checked without the model (torch-free: the API imports it).

The API checks a request with `score_rows` before it wakes the model process, and the scorer
checks its input with the same function, so both refuse the same items with the same message.
"""

from __future__ import annotations

from typing import Any

from trainers.spec.errors import UserError


def score_rows(items: Any) -> list[dict[str, Any]]:
    """Each item as the preference row whose chosen response is the item (the rejected one is never scored).

    Args:
        items: a list of ``{"text": str}`` (non-empty) or ``{"prompt": P, "response": R}``, with P a
            string or a non-empty list of ``{"role", "content"}`` messages and R a string or a message
            list holding an assistant message.

    Returns:
        One ``{"prompt", "chosen", "rejected"}`` row per item, in order.

    Raises:
        UserError: an item is malformed; ``param`` names it, e.g. ``items[3].prompt``.
    """
    if not isinstance(items, list):
        raise UserError("expected a list of items", param="items")
    return [_row(item, f"items[{i}]") for i, item in enumerate(items)]


def _row(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, dict) and set(item) == {"text"}:
        text = item["text"]
        if not isinstance(text, str) or not text:
            raise UserError(f"{where}.text: expected a non-empty string", param=f"{where}.text")
        return {"prompt": text, "chosen": "", "rejected": ""}
    if isinstance(item, dict) and set(item) == {"prompt", "response"}:
        prompt, response = item["prompt"], item["response"]
        if not isinstance(prompt, str):
            _messages(prompt, f"{where}.prompt")
        if not isinstance(response, str):
            messages = _messages(response, f"{where}.response")
            if not any(m["role"] == "assistant" for m in messages):
                raise UserError(f"{where}.response: expected at least one assistant message",
                                param=f"{where}.response")
        if prompt == "" and response == "":
            raise UserError(f"{where}: prompt and response are both empty; there is nothing to score",
                            param=where)
        return {"prompt": prompt, "chosen": response, "rejected": response}
    raise UserError(f"{where}: expected {{'text': str}} or {{'prompt': ..., 'response': ...}}", param=where)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok or not value:
        raise UserError(f"{where}: expected a string or a non-empty list of {{'role', 'content'}} messages",
                        param=where)
    return value
