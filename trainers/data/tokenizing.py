"""A canonical row's prompt and responses as token ids, the same for every trainer, and the warning for rows cut to fit.

A string prompt is tokenised as it is, with the tokenizer's own special tokens (e.g. BOS); a
message-list prompt is rendered with the tokenizer's chat template and a generation prompt, so the
completion is the assistant's turn. A response is its text (for message lists: the assistant
contents, joined by newlines) followed by EOS. The preference trainers (`trainers.data.preference`)
and the prompt rows of PPO and GRPO (`trainers.data.prompts`) render prompts alike, and report the
rows of a split that lost tokens to the length limits the same way (`report_truncated`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from trainers.spec.callbacks import Callbacks
from trainers.spec.errors import UserError


class Truncatable(Protocol):
    """A tokenised row that knows whether it lost tokens (`TokenizedPair`, `TokenizedPrompt`)."""

    truncated: bool


def prompt_token_ids(prompt: Any, tokenizer: PreTrainedTokenizerBase, *, where: str) -> list[int]:
    """Token ids of a canonical prompt, before any truncation.

    Args:
        prompt: a string, or a non-empty list of ``{"role", "content"}`` messages.
        tokenizer: the policy's tokenizer.
        where: the row, for error messages (``"train row 3"``).

    Returns:
        A string tokenised with the tokenizer's special tokens; messages rendered with its chat
        template and a generation prompt, the template supplying any BOS.

    Raises:
        UserError: a malformed message list, or messages and a tokenizer without chat template.
    """
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = _messages(prompt, where=f"{where}, field 'prompt'")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{where}: conversational rows need a chat template, and the model's tokenizer has none",
            param="base_model",
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template adds its own BOS


def response_token_ids(response: Any, tokenizer: PreTrainedTokenizerBase, *, where: str) -> list[int]:
    """Token ids of a canonical response: its text, then EOS.

    Args:
        response: a string, or a list of messages holding at least one assistant message.
        tokenizer: the policy's tokenizer (it has an EOS token).
        where: the row and field, for error messages.

    Returns:
        The text (for messages: the assistant contents joined by newlines) tokenised without
        special tokens, then the EOS id.

    Raises:
        UserError: a malformed message list, or one without an assistant message.
    """
    if isinstance(response, str):
        text = response
    else:
        messages = _messages(response, where=where)
        text = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: expected at least one assistant message")
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def report_truncated(callbacks: Callbacks, rows: Sequence[Truncatable], split: str, what: str) -> None:
    """Tell `callbacks` in one warning event how many rows of a split were cut, if any.

    Args:
        callbacks: receive ``"<n> of <N> <split> <what>"`` when n > 0; nothing otherwise.
        rows: the tokenised rows of the split.
        split: ``"train"`` or ``"eval"``.
        what: the rest of the message, e.g. ``"pairs were truncated (max_length=512)"``.
    """
    truncated = sum(row.truncated for row in rows)
    if truncated:
        callbacks.on_event("warning", f"{truncated} of {len(rows)} {split} {what}")


def _messages(value: Any, *, where: str) -> list[dict[str, str]]:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok or not value:
        raise UserError(f"{where}: expected a string or a non-empty list of {{'role', 'content'}} messages")
    return value
