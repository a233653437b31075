"""Feedback rows (KTO): one completion of a prompt, labelled desirable (true) or undesirable (false).

A feedback row is ``{"prompt": P, "completion": C, "label": bool, **extra}`` (TRL's unpaired
preference format), where either P and C are strings, or P is a non-empty list of messages and C a
list of assistant messages (rendered with the model's chat template, as preference rows are).

Decisions:
- ``label`` is a boolean. Columnar files cannot always say so: CSV cells are text and Parquet
  columns may be integers, so the text ``true``/``false``/``1``/``0`` (any case, blanks around it
  ignored) and the numbers 1 and 0 are read as booleans too; the canonical row holds a real bool. Anything else
  (``"yes"``, 2, null) is an error naming ``label``.
- A plain prompt may be ``""`` (as in preference rows: the completion carries the signal); a
  conversational prompt needs a message. An empty completion is an error: a broken export.
- A conversational completion holds assistant messages only: the trainers read the assistant
  turns of a response, so a user turn there would be silently lost.
- A preference dataset is not a feedback dataset, but a KTO job reads one as two feedback rows per
  pair (`trainers.data.feedback.unpair_preference_rows`), as TRL's ``unpair_preference_dataset``.
"""

from __future__ import annotations

from trainers.spec.rows import RowError, json_type, key_list, messages, require_object

_FORMS = {str: "a string", list: "a list of messages"}
_LABEL_TEXT = {"true": True, "false": False, "1": True, "0": False}


def normalize_feedback(obj: object) -> dict:
    """Normalise a feedback row for KTO.

    Args:
        obj: the decoded row.

    Returns:
        ``{"prompt": P, "completion": C, "label": bool, **extra}`` as the module docstring describes;
        the input is not modified.

    Raises:
        RowError: the row is invalid; ``field`` names the offending field.
    """
    row = require_object(obj)
    for key in ("prompt", "completion", "label"):
        if key not in row:
            raise RowError(f"missing required key {key!r} (got {key_list(row)})", field=key)
    prompt, completion = row["prompt"], row["completion"]
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, (str, list)):
            raise RowError(f"must be a string or a list of messages, got {json_type(value)}", field=key)
    if type(prompt) is not type(completion):
        raise RowError(f"is {_FORMS[type(completion)]} but prompt is {_FORMS[type(prompt)]}; "
                       "use one form for prompt and completion", field="completion")  # fmt: skip
    label = feedback_label(row["label"])
    if isinstance(prompt, str):
        if not completion.strip():
            raise RowError("must not be empty", field="completion")
        return {**row, "label": label}
    if not prompt:
        raise RowError("must contain at least one message", field="prompt")
    checked = messages(completion, "completion")
    for i, message in enumerate(checked):
        if message["role"] != "assistant":
            raise RowError(f"must be 'assistant' in a completion (got {message['role']!r})",
                           field=f"completion[{i}].role")  # fmt: skip
    if not any(m["content"].strip() for m in checked):
        raise RowError("must contain at least one assistant message with non-empty content", field="completion")
    return {**row, "prompt": messages(prompt, "prompt"), "completion": checked, "label": label}


def feedback_label(value: object) -> bool:
    """A row's ``label`` as a bool: true/false, or the text (``true``, ``0``, ...) or numbers of columnar files."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _LABEL_TEXT:
        return _LABEL_TEXT[value.strip().lower()]
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    shown = repr(value) if isinstance(value, (str, int, float)) else json_type(value)
    raise RowError(f"must be true (desirable) or false (undesirable), got {shown}", field="label")
