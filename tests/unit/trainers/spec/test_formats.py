"""Normalisation of preference and prompt rows into their canonical forms."""

from __future__ import annotations

import copy

import pytest

from trainers.spec.formats import RowError, normalize_preference, normalize_prompt, normalize_row


def user(text: str) -> dict:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    """An assistant message."""
    return {"role": "assistant", "content": text}


def field_of(kind: str, obj: object) -> str | None:
    """The field a rejected row's error names."""
    with pytest.raises(RowError) as caught:
        normalize_row(kind, obj)
    return caught.value.field


# --- preference: the three accepted forms -------------------------------------------------------


def test_plain_row_is_unchanged_and_keeps_extra_keys() -> None:
    row = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "math"}
    assert normalize_preference(row) == {"prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "math"}


def test_conversational_row_keeps_messages_and_their_extra_keys() -> None:
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {**user("Hi"), "name": "ann"}],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("Go away.")],
    }
    assert normalize_preference(row) == {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ann"},
        ],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }


def test_openai_row_maps_to_conversational_and_drops_input_extras() -> None:
    row = {
        "input": {"messages": [user("Cold in SF?")], "tools": [], "parallel_tool_calls": True},
        "preferred_output": [assistant("Mild, about 15C.")],
        "non_preferred_output": [assistant("No.")],
        "id": 7,
    }
    assert normalize_preference(row) == {
        "prompt": [{"role": "user", "content": "Cold in SF?"}],
        "chosen": [{"role": "assistant", "content": "Mild, about 15C."}],
        "rejected": [{"role": "assistant", "content": "No."}],
        "id": 7,
    }


def test_normalisation_does_not_modify_its_input() -> None:
    row = {"prompt": [user("Hi")], "chosen": [assistant("a")], "rejected": [{**assistant("b"), "name": None}]}
    before = copy.deepcopy(row)
    out = normalize_row("preference", row)
    assert row == before
    assert out["rejected"] == [assistant("b")]  # null extras (columnar files) are dropped


# --- preference: decisions ----------------------------------------------------------------------


def test_identical_chosen_and_rejected_is_accepted() -> None:
    row = {"prompt": "p", "chosen": "same", "rejected": "same"}
    assert normalize_preference(row) == row


def test_empty_prompt_is_accepted_only_for_plain_preference_rows() -> None:
    assert normalize_preference({"prompt": "", "chosen": "a", "rejected": "b"})["prompt"] == ""
    implicit = {"prompt": [], "chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    assert field_of("preference", implicit) == "prompt"
    openai = {"input": {"messages": []}, "preferred_output": [assistant("a")], "non_preferred_output": []}
    assert field_of("preference", openai) == "input.messages"


# --- preference: errors name the field ----------------------------------------------------------


def test_missing_chosen() -> None:
    assert field_of("preference", {"prompt": "p", "rejected": "r"}) == "chosen"


def test_invalid_role_in_chosen() -> None:
    row = {"prompt": [user("q")], "chosen": [{"role": "robot", "content": "a"}], "rejected": [assistant("b")]}
    assert field_of("preference", row) == "chosen[0].role"


def test_missing_role_and_non_string_content() -> None:
    no_role = {"prompt": [user("q"), {"content": "x"}], "chosen": [assistant("a")], "rejected": []}
    assert field_of("preference", no_role) == "prompt[1].role"
    bad_content = {"prompt": [user("q")], "chosen": [{"role": "assistant", "content": 3}], "rejected": []}
    assert field_of("preference", bad_content) == "chosen[0].content"


def test_no_assistant_message_in_rejected() -> None:
    row = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [user("b")]}
    with pytest.raises(RowError, match="assistant") as caught:
        normalize_preference(row)
    assert caught.value.field == "rejected"


def test_empty_response_is_rejected() -> None:
    assert field_of("preference", {"prompt": "p", "chosen": "", "rejected": "r"}) == "chosen"
    assert field_of("preference", {"prompt": "p", "chosen": "c", "rejected": "  "}) == "rejected"
    empty_turn = {"prompt": [user("q")], "chosen": [assistant("")], "rejected": [assistant("b")]}
    assert field_of("preference", empty_turn) == "chosen"


def test_openai_missing_preferred_output() -> None:
    row = {"input": {"messages": [user("q")]}, "non_preferred_output": [assistant("b")]}
    assert field_of("preference", row) == "preferred_output"


def test_openai_input_messages_must_be_a_list() -> None:
    row = {"input": {"messages": "q"}, "preferred_output": [assistant("a")], "non_preferred_output": []}
    assert field_of("preference", row) == "input.messages"


@pytest.mark.parametrize("row", [["prompt", "a", "b"], "text", 3, None])
def test_non_object_row(row: object) -> None:
    with pytest.raises(RowError, match="JSON object") as caught:
        normalize_preference(row)
    assert caught.value.field is None


def test_mixed_forms_name_the_odd_field() -> None:
    row = {"prompt": "q", "chosen": [assistant("a")], "rejected": "b"}
    with pytest.raises(RowError, match="list of messages but prompt is a string") as caught:
        normalize_preference(row)
    assert caught.value.field == "chosen"
    mixed_late = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": "b"}
    assert field_of("preference", mixed_late) == "rejected"


def test_unknown_shape_lists_expected_keys() -> None:
    with pytest.raises(RowError) as caught:
        normalize_preference({"question": "q", "good": "a"})
    assert caught.value.field is None
    for key in ("prompt", "chosen", "rejected", "input", "preferred_output", "non_preferred_output"):
        assert key in caught.value.message


# --- prompt rows --------------------------------------------------------------------------------


def test_prompt_rows_keep_extra_keys() -> None:
    assert normalize_prompt({"prompt": "2+2?", "answer": "4", "meta": {"k": 1}}) == {
        "prompt": "2+2?",
        "answer": "4",
        "meta": {"k": 1},
    }
    conversational = {"prompt": [user("2+2?")], "answer": "4"}
    assert normalize_row("prompt", conversational) == conversational


def test_prompt_rows_require_a_non_empty_prompt() -> None:
    assert field_of("prompt", {"answer": "4"}) == "prompt"
    assert field_of("prompt", {"prompt": ""}) == "prompt"
    assert field_of("prompt", {"prompt": []}) == "prompt"
    assert field_of("prompt", {"prompt": [{"role": "user"}]}) == "prompt[0].content"
    assert field_of("prompt", [1]) is None


def test_text_rows_for_ptx():
    from trainers.spec.formats import RowError, normalize_row

    assert normalize_row("text", {"text": "Once upon a time.", "source": "x"}) == {
        "text": "Once upon a time.", "source": "x"}
    for bad, field in (({"txt": "a"}, "text"), ({"text": "  "}, "text"), ({"text": 3}, "text")):
        with pytest.raises(RowError) as info:
            normalize_row("text", bad)
        assert info.value.field == field
