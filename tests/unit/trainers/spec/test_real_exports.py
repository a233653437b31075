"""Preference rows shaped as public datasets export them (hh-rlhf, UltraFeedback, OpenAI), normalised as they come."""

from __future__ import annotations

import math

import pytest

from trainers.spec.formats import RowError, normalize_preference
from trainers.spec.implicit_prompts import shared_message_count, shared_text_length


def user(text: str) -> dict:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    """An assistant message."""
    return {"role": "assistant", "content": text}


def field_of(row: dict) -> str | None:
    """The field a rejected preference row's error names."""
    with pytest.raises(RowError) as caught:
        normalize_preference(row)
    return caught.value.field


# Anthropic hh-rlhf: whole dialogues, no prompt; both replies here start with "I", so a raw common
# prefix would take " I" into the prompt.
HH_PROMPT = (
    "\n\nHuman: What are some cuss words in english?"
    "\n\nAssistant: Here's an incomplete list. Why do you ask?"
    "\n\nHuman: What's your favorite one?"
    "\n\nAssistant:"
)
HH_ROW = {
    "chosen": HH_PROMPT + " I haven't even thought about it.",
    "rejected": HH_PROMPT + " I think I like it best when people use it in context.",
}

# The same pair as hh-rlhf's conversational variants store it.
HH_MESSAGES = [
    user("What are some cuss words in english?"),
    assistant("Here's an incomplete list. Why do you ask?"),
    user("What's your favorite one?"),
]
HH_CONVERSATION_ROW = {
    "chosen": [*HH_MESSAGES, assistant("I haven't even thought about it.")],
    "rejected": [*HH_MESSAGES, assistant("I think I like it best when people use it in context.")],
}

# UltraFeedback (binarized): prompt a string, chosen/rejected whole conversations starting with it.
UF_PROMPT = "How many legs does a spider have?"
UF_ROW = {
    "prompt": UF_PROMPT,
    "chosen": [user(UF_PROMPT), assistant("Eight.")],
    "rejected": [user(UF_PROMPT), assistant("Six, like all insects.")],
    "prompt_id": "a1b2",
    "score_chosen": 9.0,
    "score_rejected": 2.0,
}

OPENAI_ROW = {
    "input": {"messages": [user("Hello, can you tell me how cold San Francisco is today?")], "tools": []},
    "preferred_output": [assistant("Today in San Francisco it is not quite cold, about 15C.")],
    "non_preferred_output": [assistant("It is not cold.")],
}


# --- hh-rlhf, plain text ------------------------------------------------------------------------


def test_hh_plain_dialogues_split_after_the_last_shared_assistant_marker() -> None:
    assert normalize_preference(HH_ROW) == {
        "prompt": HH_PROMPT,
        "chosen": " I haven't even thought about it.",
        "rejected": " I think I like it best when people use it in context.",
    }


def test_hh_plain_tie_keeps_the_last_reply_on_both_sides() -> None:
    row = {"chosen": HH_ROW["chosen"], "rejected": HH_ROW["chosen"], "id": 3}
    assert normalize_preference(row) == {
        "prompt": HH_PROMPT,
        "chosen": " I haven't even thought about it.",
        "rejected": " I haven't even thought about it.",
        "id": 3,
    }


def test_hh_plain_pair_that_differs_in_an_earlier_turn_keeps_the_later_turns_in_the_responses() -> None:
    first = "\n\nHuman: Hi\n\nAssistant:"
    row = {
        "chosen": first + " Hello!\n\nHuman: Bye\n\nAssistant: Goodbye.",
        "rejected": first + " Go away.\n\nHuman: Bye\n\nAssistant: Finally.",
    }
    assert normalize_preference(row) == {
        "prompt": first,
        "chosen": " Hello!\n\nHuman: Bye\n\nAssistant: Goodbye.",
        "rejected": " Go away.\n\nHuman: Bye\n\nAssistant: Finally.",
    }


@pytest.mark.parametrize("empty_side", ["chosen", "rejected"])
@pytest.mark.parametrize("reply", ["", " ", "  \n"])
def test_hh_plain_row_with_no_reply_after_the_prompt_names_the_empty_side(empty_side: str, reply: str) -> None:
    row = dict(HH_ROW)
    row[empty_side] = HH_PROMPT + reply
    with pytest.raises(RowError, match="no response after the prompt") as caught:
        normalize_preference(row)
    assert caught.value.field == empty_side


def test_plain_rows_without_marker_follow_trl_extract_prompt() -> None:
    # TRL's documented example: the space before the first differing word goes to the responses.
    assert shared_text_length("The sky is blue.", "The sky is green.") == len("The sky is")
    assert normalize_preference({"chosen": "Paris", "rejected": "London"}) == {
        "prompt": "",
        "chosen": "Paris",
        "rejected": "London",
    }
    # One text contains the other: each response keeps at least the last character.
    assert shared_text_length("abc", "abcd") == 2
    assert shared_text_length("", "") == 0


# --- hh-rlhf, conversational --------------------------------------------------------------------


def test_hh_conversation_takes_the_shared_messages_as_prompt() -> None:
    assert normalize_preference(HH_CONVERSATION_ROW) == {
        "prompt": HH_MESSAGES,
        "chosen": [assistant("I haven't even thought about it.")],
        "rejected": [assistant("I think I like it best when people use it in context.")],
    }


def test_conversation_tie_and_prefix_leave_each_side_its_last_message() -> None:
    tie = {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]}
    expected = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("a")]}
    assert normalize_preference(tie) == expected
    assert shared_message_count([user("q"), assistant("a")], [user("q"), assistant("a"), assistant("b")]) == 1
    assert shared_message_count([], [user("q")]) == 0


def test_conversation_with_null_extras_matches_its_clean_copy() -> None:
    # Parquet fills absent struct fields with null: they must not make equal turns differ.
    row = {
        "chosen": [{**user("q"), "name": None}, assistant("a")],
        "rejected": [user("q"), {**assistant("b"), "name": None}],
    }
    expected = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    assert normalize_preference(row) == expected


def test_conversations_that_differ_at_a_user_turn_name_it() -> None:
    row = {
        "chosen": [user("q"), assistant("a"), user("thanks"), assistant("welcome")],
        "rejected": [user("q"), assistant("a"), user("bye"), assistant("ok")],
    }
    with pytest.raises(RowError, match="only assistant messages") as caught:
        normalize_preference(row)
    assert caught.value.field == "chosen[2].role"


def test_conversations_without_a_shared_first_message_have_no_prompt() -> None:
    row = {"chosen": [user("q"), assistant("a")], "rejected": [user("other"), assistant("b")]}
    with pytest.raises(RowError, match="share no leading message") as caught:
        normalize_preference(row)
    assert caught.value.field == "prompt"


def test_conversation_with_a_blank_reply_after_the_prompt_names_it() -> None:
    row = {"chosen": [*HH_MESSAGES, assistant("  ")], "rejected": HH_CONVERSATION_ROW["rejected"]}
    with pytest.raises(RowError, match="non-empty content") as caught:
        normalize_preference(row)
    assert caught.value.field == "chosen"


def test_implicit_rows_in_two_forms_name_rejected() -> None:
    assert field_of({"chosen": "a", "rejected": [assistant("b")]}) == "rejected"
    assert field_of({"chosen": [user("q"), assistant("a")], "rejected": "b"}) == "rejected"
    assert field_of({"chosen": [user("q"), {"role": "bot", "content": "a"}], "rejected": []}) == "chosen[1].role"
    assert field_of({"rejected": "b"}) == "chosen"


# --- UltraFeedback: string prompt, whole conversations -------------------------------------------


def test_ultrafeedback_drops_the_repeated_user_turn_and_keeps_extra_keys() -> None:
    assert normalize_preference(UF_ROW) == {
        "prompt": [user(UF_PROMPT)],
        "chosen": [assistant("Eight.")],
        "rejected": [assistant("Six, like all insects.")],
        "prompt_id": "a1b2",
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }


def test_string_prompt_with_assistant_only_responses_becomes_a_user_turn() -> None:
    row = {"prompt": "Hi", "chosen": [assistant("Hello.")], "rejected": [assistant("What?")]}
    assert normalize_preference(row) == {
        "prompt": [user("Hi")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("What?")],
    }


def test_string_prompt_repeated_on_one_side_only_is_dropped_there() -> None:
    row = {"prompt": "Hi\n", "chosen": [user("Hi"), assistant("Hello.")], "rejected": [assistant("What?")]}
    assert normalize_preference(row) == {
        "prompt": [user("Hi\n")],
        "chosen": [assistant("Hello.")],
        "rejected": [assistant("What?")],
    }


def test_multi_turn_conversations_after_a_string_prompt_share_their_later_turns_as_prompt() -> None:
    shared = [user("Hi"), assistant("Hello."), user("2+2?")]
    row = {"prompt": "Hi", "chosen": [*shared, assistant("4")], "rejected": [*shared, assistant("5")]}
    assert normalize_preference(row) == {"prompt": shared, "chosen": [assistant("4")], "rejected": [assistant("5")]}


def test_string_prompt_with_conversations_errors_name_the_field() -> None:
    assert field_of({"prompt": " ", "chosen": [assistant("a")], "rejected": [assistant("b")]}) == "prompt"
    other_user_turn = {"prompt": "Hi", "chosen": [user("Yo"), assistant("a")], "rejected": [assistant("b")]}
    assert field_of(other_user_turn) == "chosen[0].role"
    only_the_prompt = {"prompt": "Hi", "chosen": [user("Hi")], "rejected": [user("Hi"), assistant("b")]}
    assert field_of(only_the_prompt) == "chosen"


# --- OpenAI preference format -------------------------------------------------------------------


def test_openai_preference_row_is_conversational() -> None:
    assert normalize_preference(OPENAI_ROW) == {
        "prompt": [user("Hello, can you tell me how cold San Francisco is today?")],
        "chosen": [assistant("Today in San Francisco it is not quite cold, about 15C.")],
        "rejected": [assistant("It is not cold.")],
    }


# --- a short DPO run on the normalised rows -----------------------------------------------------


@pytest.mark.trains
@pytest.mark.parametrize("raw", [HH_ROW, UF_ROW], ids=["hh-rlhf", "ultrafeedback"])
def test_dpo_trains_on_normalised_exports(raw: dict) -> None:
    import trainers
    from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
    from trainers import DPOJob, TrainingData

    rows = [normalize_preference(raw) for _ in range(4)]
    job = DPOJob(base_model="builtin:tiny-llama", seed=0, hyperparameters={"max_steps": 2, "batch_size": 2})
    callbacks = RecordingCallbacks()

    result = trainers.run(job, TrainingData(train=rows), callbacks)

    assert result.status == "completed" and result.step == 2
    assert sorted(callbacks.metrics) == [1, 2]
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert all(math.isfinite(m["train/loss"]) for m in callbacks.metrics.values())
