import pytest

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers.data.prompts import TokenizedPrompt
from trainers.data.tokenizing import prompt_token_ids, report_truncated, response_token_ids
from trainers.spec.errors import UserError

BOS, EOS, USER, ASSISTANT = 257, 258, 260, 261  # builtin:tiny-llama: bytes are ids 0-255, then pad, bos, eos, roles


def test_a_text_prompt_is_bos_then_its_bytes():
    _, tokenizer = tiny()
    assert prompt_token_ids("hi", tokenizer, where="train row 0") == [BOS, ord("h"), ord("i")]


def test_a_message_prompt_is_the_chat_template_with_a_generation_prompt_and_one_bos():
    _, tokenizer = tiny()
    ids = prompt_token_ids([{"role": "user", "content": "hi"}], tokenizer, where="train row 0")
    assert ids == [BOS, USER, ord("\n"), ord("h"), ord("i"), EOS, ASSISTANT, ord("\n")]


def test_a_response_is_its_text_then_eos_and_messages_give_the_assistant_contents_joined_by_newlines():
    _, tokenizer = tiny()
    assert response_token_ids("ok", tokenizer, where="train row 0, field 'chosen'") == [ord("o"), ord("k"), EOS]
    messages = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "x"},
                {"role": "assistant", "content": "b"}]  # fmt: skip
    assert response_token_ids(messages, tokenizer, where="w") == [ord("a"), ord("\n"), ord("b"), EOS]


def test_bad_messages_are_user_errors_naming_the_row():
    _, tokenizer = tiny()
    with pytest.raises(UserError, match=r"^eval row 2, field 'prompt': expected a string or a non-empty list"):
        prompt_token_ids([], tokenizer, where="eval row 2")
    with pytest.raises(UserError, match=r"^train row 1, field 'rejected': expected at least one assistant message"):
        response_token_ids([{"role": "user", "content": "x"}], tokenizer, where="train row 1, field 'rejected'")


def test_truncated_rows_are_reported_in_one_warning_and_none_is_silent():
    callbacks = RecordingCallbacks()
    rows = [TokenizedPrompt(ids=[1], item={}, truncated=cut) for cut in (True, False, True)]
    report_truncated(callbacks, rows, "eval", "prompts were cut")
    assert callbacks.events == [("warning", "2 of 3 eval prompts were cut")]
    report_truncated(callbacks, rows[1:2], "train", "prompts were cut")
    assert len(callbacks.events) == 1
