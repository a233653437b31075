"""Feedback rows (KTO): validation, the labels columnar files write, and telling the kind from a row."""

from __future__ import annotations

import copy

import pytest

from trainers.spec.formats import RowError, detect_kind, normalize_row


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def error_of(obj: object) -> tuple[str | None, str]:
    with pytest.raises(RowError) as caught:
        normalize_row("feedback", obj)
    return caught.value.field, caught.value.message


def test_plain_row_is_kept_with_its_extra_keys() -> None:
    row = {"prompt": "2+2=", "completion": "4", "label": True, "source": "s1"}
    before = copy.deepcopy(row)
    assert normalize_row("feedback", row) == row
    assert row == before  # not modified
    assert normalize_row("feedback", {"prompt": "", "completion": "x", "label": False})["label"] is False


def test_conversational_row_validates_messages_and_reads_developer_as_system() -> None:
    row = {"prompt": [msg("developer", "Be brief."), msg("user", "Hi")], "completion": [msg("assistant", "Hello.")],
           "label": False}
    out = normalize_row("feedback", row)
    assert out["prompt"][0]["role"] == "system" and out["completion"] == [msg("assistant", "Hello.")]
    assert out["label"] is False


@pytest.mark.parametrize(("value", "label"), [
    ("true", True), (" False ", False), ("1", True), ("0", False), ("TRUE", True),
    (1, True), (0, False), (1.0, True), (0.0, False),
])
def test_labels_of_columnar_files_become_booleans(value: object, label: bool) -> None:
    out = normalize_row("feedback", {"prompt": "q", "completion": "a", "label": value})
    assert out["label"] is label


@pytest.mark.parametrize(("row", "field", "message"), [
    ({"completion": "a", "label": True}, "prompt", "missing required key 'prompt'"),
    ({"prompt": "q", "label": True}, "completion", "missing required key 'completion'"),
    ({"prompt": "q", "completion": "a"}, "label", "missing required key 'label'"),
    ({"prompt": "q", "completion": "a", "label": "yes"}, "label", "must be true (desirable) or false"),
    ({"prompt": "q", "completion": "a", "label": 2}, "label", "got 2"),
    ({"prompt": "q", "completion": "a", "label": None}, "label", "got null"),
    ({"prompt": "q", "completion": "  ", "label": True}, "completion", "must not be empty"),
    ({"prompt": 3, "completion": "a", "label": True}, "prompt", "must be a string or a list of messages"),
    ({"prompt": "q", "completion": [msg("assistant", "a")], "label": True}, "completion", "use one form"),
    ({"prompt": [], "completion": [msg("assistant", "a")], "label": True}, "prompt", "at least one message"),
    ({"prompt": [msg("user", "q")], "completion": [msg("user", "a")], "label": True}, "completion[0].role",
     "must be 'assistant'"),
    ({"prompt": [msg("user", "q")], "completion": [msg("assistant", " ")], "label": True}, "completion",
     "non-empty content"),
    ({"prompt": [msg("robot", "q")], "completion": [msg("assistant", "a")], "label": True}, "prompt[0].role",
     "must be one of"),
])
def test_bad_rows_name_their_field(row: dict, field: str, message: str) -> None:
    got_field, got_message = error_of(row)
    assert got_field == field and message in got_message


@pytest.mark.parametrize(("row", "kind"), [
    ({"prompt": "q", "completion": "a", "label": True}, "feedback"),
    ({"prompt": [msg("user", "q")], "completion": [msg("assistant", "a")], "label": False}, "feedback"),
    ({"prompt": "q", "completion": "a", "label": "positive"}, "chat"),  # a chat row with a label column
    ({"prompt": "q", "completion": "a"}, "chat"),
])
def test_detect_kind_knows_feedback_by_its_boolean_label(row: dict, kind: str) -> None:
    assert detect_kind(row) == kind
    normalize_row(kind, row)  # and the row is valid as that kind
