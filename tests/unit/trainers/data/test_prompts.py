import pytest

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers.data.prompts import PromptOrder, tokenize_prompt_split, tokenize_prompts
from trainers.spec.errors import UserError

BOS, ASSISTANT = 257, 261  # builtin:tiny-llama: bytes are ids 0-255, then pad, bos, eos, system, user, assistant


def test_a_text_prompt_is_bos_then_its_bytes_and_the_row_is_kept_whole():
    _, tokenizer = tiny()
    row = {"prompt": "hi", "answer": "a", "meta": {"lang": "en"}}
    (prompt,) = tokenize_prompts([row], tokenizer, max_prompt_length=16)
    assert prompt.ids == [BOS, ord("h"), ord("i")]
    assert prompt.item is row and not prompt.truncated


def test_a_chat_prompt_goes_through_the_template_with_a_generation_prompt():
    _, tokenizer = tiny()
    row = {"prompt": [{"role": "user", "content": "hi"}]}
    (prompt,) = tokenize_prompts([row], tokenizer, max_prompt_length=64)
    assert prompt.ids[0] == BOS and prompt.ids.count(BOS) == 1  # the template's BOS only
    assert prompt.ids[-2:] == [ASSISTANT, ord("\n")]  # the completion is the assistant's turn
    assert tokenizer.decode(prompt.ids) == "<s><|user|>\nhi</s><|assistant|>\n"


def test_long_prompts_keep_their_last_tokens_and_are_reported_once():
    _, tokenizer = tiny()
    rows = [{"prompt": "abcdefgh"}, {"prompt": "xy"}, {"prompt": "0123456789"}]
    callbacks = RecordingCallbacks()
    prompts = tokenize_prompt_split(rows, tokenizer, max_prompt_length=4, split="train", callbacks=callbacks)
    assert prompts[0].ids == [ord(c) for c in "efgh"] and prompts[0].truncated
    assert prompts[1].ids == [BOS, ord("x"), ord("y")] and not prompts[1].truncated
    assert prompts[2].ids == [ord(c) for c in "6789"]
    ((level, message),) = callbacks.events
    assert level == "warning" and message.startswith("2 of 3 train prompts")


def test_rows_without_a_prompt_or_with_bad_messages_are_user_errors_naming_the_row():
    _, tokenizer = tiny()
    with pytest.raises(UserError, match="train row 1: missing field 'prompt'"):
        tokenize_prompts([{"prompt": "a"}, {"text": "b"}], tokenizer, max_prompt_length=8)
    with pytest.raises(UserError, match="eval row 0"):
        tokenize_prompts([{"prompt": [{"role": "user"}]}], tokenizer, max_prompt_length=8, split="eval")


def test_every_rollout_is_full_and_a_pure_function_of_seed_and_number():
    order = PromptOrder(num_rows=10, rollout_batch_size=4, seed=3)
    assert order.rollouts_per_epoch == 3
    first_epoch = [i for r in (1, 2) for i in order.rollout_indices(r)] + order.rollout_indices(3)[:2]
    assert sorted(first_epoch) == list(range(10))  # each row once per epoch
    assert all(len(order.rollout_indices(r)) == 4 for r in range(1, 20))
    again = PromptOrder(num_rows=10, rollout_batch_size=4, seed=3)
    assert [again.rollout_indices(r) for r in (7, 2)] == [order.rollout_indices(r) for r in (7, 2)]
    assert PromptOrder(num_rows=10, rollout_batch_size=4, seed=4).rollout_indices(1) != order.rollout_indices(1)


def test_fewer_rows_than_a_rollout_repeat_within_it():
    order = PromptOrder(num_rows=2, rollout_batch_size=5, seed=0)
    indices = order.rollout_indices(1)
    assert len(indices) == 5 and set(indices) == {0, 1}
    with pytest.raises(UserError, match="no rows"):
        PromptOrder(num_rows=0, rollout_batch_size=5, seed=0)
