"""The templates of string_check graders: ``{{sample.output_text}}`` and ``{{item.<field>}}`` (torch-free).

``{{sample.output_text}}`` is the completion; ``{{item.<field>}}`` is a column of the prompt row,
with dots for nested fields and digits for list positions (``{{item.meta.lang}}``,
``{{item.answers.0}}``). Nothing else may stand between double braces. `parse_template` splits a
template into literal text and references; `trainers.spec.graders.render` fills them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

_ITEM_REF = re.compile(r"item((?:\.[^.\s{}]+)+)")


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """One ``{{...}}`` of a template: the completion, or a field path into the prompt row."""

    source: Literal["sample", "item"]
    path: tuple[str, ...]  # ("output_text",) for the completion; ("meta", "lang") for item.meta.lang
    text: str  # as written, for error messages


@lru_cache(maxsize=4096)
def parse_template(text: str) -> tuple[str | TemplateRef, ...]:
    """Split a template into literal text and references.

    Args:
        text: e.g. ``"The answer is {{item.answer}}"``; whitespace inside the braces is ignored.

    Returns:
        The literal pieces (str) and references (`TemplateRef`) in order.

    Raises:
        ValueError: a ``{{...}}`` names something other than ``sample.output_text`` or
            ``item.<field>``, or a ``{{`` is never closed.
    """
    # Scanned with str.find, each '{{' closed by the first '}}' after it: linear in the text, where
    # a lazy regex would rescan the rest of the text from every unclosed '{{'.
    parts: list[str | TemplateRef] = []
    end = 0
    while (start := text.find("{{", end)) != -1:
        close = text.find("}}", start + 2)
        if close == -1:
            raise ValueError("a '{{' is never closed by '}}'")
        parts.append(text[end:start])
        end = close + 2
        written, name = text[start:end], text[start + 2 : close].strip()
        if name == "sample.output_text":
            parts.append(TemplateRef("sample", ("output_text",), written))
        elif item := _ITEM_REF.fullmatch(name):
            parts.append(TemplateRef("item", tuple(item.group(1)[1:].split(".")), written))
        else:
            raise ValueError(
                f"unknown template {excerpt(written)}: use {{{{sample.output_text}}}} for the completion "
                "or {{item.<field>}} for a field of the prompt row"
            )
    parts.append(text[end:])
    return tuple(p for p in parts if p != "")


def is_literal(parts: tuple[str | TemplateRef, ...]) -> bool:
    """Whether a parsed template is literal text only, the same for every completion and row."""
    return all(isinstance(p, str) for p in parts)


def excerpt(text: str, limit: int = 80) -> str:
    """`text` quoted for an error message; past `limit` characters, its start and its length."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"
