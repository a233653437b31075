"""Chat rows (SFT), OpenAI reinforcement rows as prompt rows, and telling a row's kind from the row."""

from __future__ import annotations

import copy

import pytest

from trainers.spec.formats import RowError, detect_kind, normalize_chat, normalize_prompt, normalize_row


def msg(role: str, content: str, **extra) -> dict:
    """A message."""
    return {"role": role, "content": content, **extra}


def error_of(kind: str, obj: object) -> tuple[str | None, str]:
    """The field and message of a rejected row's error."""
    with pytest.raises(RowError) as caught:
        normalize_row(kind, obj)
    return caught.value.field, caught.value.message


# --- chat: messages -------------------------------------------------------------------------------


def test_openai_chat_row_keeps_messages_weights_and_extra_keys_and_drops_tools() -> None:
    row = {
        "messages": [
            msg("system", "Be brief."),
            msg("user", "Hi"),
            msg("assistant", "Hello.", weight=0),
            msg("user", "Weather?"),
            msg("assistant", "", tool_calls=[{"id": "c1"}]),
            msg("tool", "15C", tool_call_id="c1"),
            msg("assistant", "Mild.", weight=1.0),
        ],
        "tools": [{"type": "function"}],
        "parallel_tool_calls": False,
        "source": "s1",
    }
    original = copy.deepcopy(row)
    out = normalize_row("chat", row)
    assert row == original
    assert out == {
        "messages": [
            msg("system", "Be brief."),
            msg("user", "Hi"),
            msg("assistant", "Hello.", weight=0),
            msg("user", "Weather?"),
            msg("assistant", "", tool_calls=[{"id": "c1"}]),
            msg("tool", "15C", tool_call_id="c1"),
            msg("assistant", "Mild.", weight=1),
        ],
        "source": "s1",
    }
    assert type(out["messages"][6]["weight"]) is int


def test_developer_role_reads_as_system_and_null_message_keys_are_dropped() -> None:
    out = normalize_chat({"messages": [msg("developer", "Rules."), msg("user", "q", name=None), msg("assistant", "a")]})
    assert out["messages"] == [msg("system", "Rules."), msg("user", "q"), msg("assistant", "a")]


def test_trailing_turns_after_the_last_assistant_message_are_kept() -> None:
    row = {"messages": [msg("user", "q"), msg("assistant", "a"), msg("user", "thanks")]}
    assert normalize_chat(row) == row


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"messages": [msg("user", "q")]}, "messages", "must contain at least one assistant message"),
        ({"messages": []}, "messages", "must contain at least one assistant message"),
        ({"messages": [msg("user", "q"), msg("assistant", "a", weight=0)]}, "messages",
         "must contain at least one assistant message with non-empty content and weight 1 (or no weight)"),
        ({"messages": [msg("user", "q"), msg("assistant", "  ")]}, "messages",
         "must contain at least one assistant message with non-empty content and weight 1 (or no weight)"),
        ({"messages": [msg("user", "q", weight=1), msg("assistant", "a")]}, "messages[0].weight",
         "is allowed on assistant messages only, not on a 'user' message"),
        ({"messages": [msg("user", "q"), msg("assistant", "a", weight=0.5)]}, "messages[1].weight",
         "must be 0 or 1 (got 0.5)"),
        ({"messages": [msg("user", "q"), msg("assistant", "a", weight=True)]}, "messages[1].weight",
         "must be 0 or 1 (got boolean)"),
        ({"messages": [msg("user", "q"), msg("assistant", "a", weight="1")]}, "messages[1].weight",
         "must be 0 or 1 (got string)"),
        ({"messages": [msg("narrator", "q"), msg("assistant", "a")]}, "messages[0].role",
         "must be one of system, user, assistant, tool (got 'narrator')"),
        ({"messages": [msg("user", "q"), {"role": "assistant"}]}, "messages[1].content",
         "must be a string (got missing)"),
        ({"messages": [msg("user", "q"), "a"]}, "messages[1]", "must be a message object, got string"),
        ({"messages": "hi"}, "messages", "must be a list of messages, got string"),
    ],
)
def test_bad_messages_rows_name_their_field(row: dict, field: str, message: str) -> None:
    assert error_of("chat", row) == (field, message)


# --- chat: prompt and completion ------------------------------------------------------------------


def test_prompt_completion_row_is_kept_and_its_prompt_may_be_empty() -> None:
    row = {"prompt": "2+2=", "completion": " 4", "id": 3}
    assert normalize_chat(row) == row
    assert normalize_chat({"prompt": "", "completion": "Once upon a time"}) == {
        "prompt": "", "completion": "Once upon a time"}


def test_conversational_prompt_completion_becomes_messages_training_the_completion_only() -> None:
    row = {"prompt": [msg("user", "2+2?"), msg("assistant", "4"), msg("user", "3+3?")],
           "completion": [msg("assistant", "6")], "id": 1}
    assert normalize_chat(row) == {
        "messages": [msg("user", "2+2?"), msg("assistant", "4", weight=0), msg("user", "3+3?"), msg("assistant", "6")],
        "id": 1}
    assert row["prompt"][1] == msg("assistant", "4")  # the input is not modified


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"prompt": "q"}, "completion", "missing required key 'completion' (got prompt)"),
        ({"completion": "a"}, "prompt", "missing required key 'prompt' (got completion)"),
        ({"prompt": "q", "completion": " "}, "completion", "must not be empty"),
        ({"prompt": ["q"], "completion": "a"}, "prompt",
         "must be a string (or both prompt and completion lists of messages), got array"),
        ({"prompt": "q", "completion": 4}, "completion",
         "must be a string (or both prompt and completion lists of messages), got number"),
        ({"prompt": [], "completion": [msg("assistant", "a")]}, "prompt", "must contain at least one message"),
        ({"prompt": [msg("user", "q")], "completion": [msg("user", "a")]}, "completion[0].role",
         "must be 'assistant' in a completion (got 'user')"),
        ({"prompt": [msg("user", "q")], "completion": [msg("assistant", " ")]}, "completion",
         "must contain at least one assistant message with non-empty content and weight 1 (or no weight)"),
        ({"prompt": [msg("user", "q")], "completion": [msg("assistant", "a", weight=2)]}, "completion[0].weight",
         "must be 0 or 1 (got 2)"),
        ({"text": "q"}, None, "unknown chat row shape: expected key messages, or prompt and completion; got text"),
        ([1], None, "row must be a JSON object, got array"),
    ],
)
def test_bad_completion_rows_name_their_field(row: object, field: str | None, message: str) -> None:
    assert error_of("chat", row) == (field, message)


# --- prompt: OpenAI reinforcement rows --------------------------------------------------------------


def test_openai_reinforcement_row_becomes_a_prompt_row_keeping_the_grader_fields() -> None:
    row = {"messages": [msg("developer", "Answer with a number."), msg("user", "2+2?")], "reference_answer": "4"}
    assert normalize_prompt(row) == {
        "prompt": [msg("system", "Answer with a number."), msg("user", "2+2?")], "reference_answer": "4"}


def test_a_prompt_row_with_messages_as_an_extra_key_is_read_by_its_prompt() -> None:
    row = {"prompt": "2+2?", "messages": "kept as data"}
    assert normalize_prompt(row) == row


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"messages": [msg("user", "q"), msg("assistant", "a")]}, "messages[1].role",
         "must end with a user message, the turn the policy answers (got 'assistant')"),
        ({"messages": []}, "messages", "must contain at least one message"),
        ({"messages": {"role": "user"}}, "messages", "must be a list of messages, got object"),
        ({"messages": [msg("tool", "x")]}, "messages[0].role",
         "must be one of system, user, assistant (got 'tool')"),
    ],
)
def test_bad_reinforcement_rows_name_their_field(row: dict, field: str, message: str) -> None:
    assert error_of("prompt", row) == (field, message)


# --- detect_kind ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "kind"),
    [
        ({"messages": [msg("user", "q"), msg("assistant", "a")]}, "chat"),
        ({"messages": [msg("user", "q"), msg("assistant", "a")], "tools": []}, "chat"),
        ({"prompt": "q", "completion": "a"}, "chat"),
        ({"prompt": [msg("user", "q")], "completion": [msg("assistant", "a")]}, "chat"),
        ({"messages": [msg("system", "s"), msg("user", "q")], "answer": "4"}, "prompt"),
        ({"prompt": "q"}, "prompt"),
        ({"prompt": [msg("user", "q")], "answer": "4"}, "prompt"),
        ({"input": {"messages": [msg("user", "q")]}, "preferred_output": [msg("assistant", "a")],
          "non_preferred_output": [msg("assistant", "b")]}, "preference"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": "H: q A: a", "rejected": "H: q A: b"}, "preference"),
        ({"prompt": "q", "chosen": "a"}, None),
        ({"messages": [msg("user", "q"), msg("tool", "x")]}, None),
        ({"messages": []}, None),
        ({"messages": "hi"}, None),
        ({"messages": [{"role": 3}]}, None),
        ({"text": "hello"}, None),
        ({}, None),
    ],
)
def test_detect_kind_tells_the_kind_from_one_row(row: dict, kind: str | None) -> None:
    assert detect_kind(row) == kind


def test_detect_kind_agrees_with_normalisation_on_valid_rows() -> None:
    rows = [
        {"messages": [msg("user", "q"), msg("assistant", "a")]},
        {"prompt": "q", "completion": "a"},
        {"messages": [msg("user", "q")], "answer": "4"},
        {"prompt": "q"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    for row in rows:
        kind = detect_kind(row)
        assert kind is not None
        normalize_row(kind, row)  # no RowError
    assert detect_kind([1, 2]) is None  # type: ignore[arg-type]
