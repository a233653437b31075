import pytest
import torch

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers.data.feedback import (
    collate_feedback,
    kl_partners,
    tokenize_feedback,
    tokenize_feedback_split,
    unpair_preference_rows,
)
from trainers.spec.errors import UserError
from trainers.spec.kto import KTOHyperparameters

BOS, EOS, PAD = 257, 258, 256  # builtin:tiny-llama; byte b is token b


@pytest.fixture
def tokenizer():
    return tiny()[1]


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_unpairing_gives_every_chosen_as_desirable_then_every_rejected_as_undesirable():
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b", "margin": 1.0},
            {"prompt": [{"role": "user", "content": "p2"}], "chosen": "c", "rejected": "d"}]
    assert unpair_preference_rows(rows) == [
        {"prompt": "p1", "completion": "a", "label": True},
        {"prompt": [{"role": "user", "content": "p2"}], "completion": "c", "label": True},
        {"prompt": "p1", "completion": "b", "label": False},
        {"prompt": [{"role": "user", "content": "p2"}], "completion": "d", "label": False},
    ]


@pytest.mark.parametrize(("count", "group", "partners"), [
    (4, 4, [3, 0, 1, 2]),  # TRL: [y_n, y_1, ..., y_{n-1}] within the batch
    (6, 3, [2, 0, 1, 5, 3, 4]),
    (5, 2, [1, 0, 4, 2, 3]),  # the lone fifth example joins the last group: (2, 3, 4)
    (5, 8, [4, 0, 1, 2, 3]),
    (2, 2, [1, 0]),
    (1, 2, [0]),
])
def test_kl_partners_shift_completions_by_one_within_each_group(count, group, partners):
    got = kl_partners(count, group)
    assert got == partners
    if count >= 2:
        assert all(p != i for i, p in enumerate(got)) and sorted(got) == list(range(count))


def test_examples_carry_their_mismatched_completion_cut_after_their_own_prompt(tokenizer):
    rows = [{"prompt": "ab", "completion": "XYZW", "label": True},
            {"prompt": "cdefgh", "completion": "Q", "label": False},
            {"prompt": "i", "completion": "RS", "label": True}]
    examples = tokenize_feedback(rows, tokenizer, max_length=9, max_prompt_length=8, group_size=3)
    assert [e.desirable for e in examples] == [True, False, True]
    first, second, third = examples
    assert first.prompt_ids == [BOS, *ids("ab")] and first.completion_ids == [*ids("XYZW"), EOS]
    assert first.kl_completion_ids == [*ids("RS"), EOS]  # the last example's completion
    assert second.prompt_ids == [BOS, *ids("cdefgh")] and second.completion_ids == [ord("Q"), EOS]
    assert second.kl_completion_ids == ids("XY")  # the first's, cut to the 9 − 7 tokens left
    assert not second.truncated  # its own prompt and completion are whole
    assert third.kl_completion_ids == [ord("Q"), EOS]
    pair = second.as_pair()
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == (second.prompt_ids, [ord("Q"), EOS], ids("XY"))


def test_preference_rows_are_read_as_two_examples_and_errors_name_the_row(tokenizer):
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"}, {"prompt": "q", "chosen": "yes", "rejected": "no"}]
    examples = tokenize_feedback(rows, tokenizer, max_length=32, max_prompt_length=8, group_size=4)
    assert [e.completion_ids[:-1] for e in examples] == [ids("good"), ids("yes"), ids("bad"), ids("no")]
    assert [e.desirable for e in examples] == [True, True, False, False]
    assert [e.kl_completion_ids[:-1] for e in examples] == [ids("no"), ids("good"), ids("yes"), ids("bad")]
    bad = [{"prompt": "p", "chosen": "a", "rejected": [{"role": "user", "content": "x"}]}]
    with pytest.raises(UserError, match="train row 0, field 'rejected'"):
        tokenize_feedback(bad, tokenizer, max_length=32, max_prompt_length=8, group_size=2)


def test_split_reports_label_counts_and_truncation(tokenizer):
    callbacks = RecordingCallbacks()
    rows = [{"prompt": "p" * 20, "completion": "a", "label": True}, {"prompt": "q", "completion": "b", "label": False},
            {"prompt": "r", "completion": "c", "label": False}]
    hp = KTOHyperparameters(max_length=16, max_prompt_length=8, batch_size=2)
    examples = tokenize_feedback_split(rows, tokenizer, hp, "train", callbacks)
    assert [e.truncated for e in examples] == [True, False, False]
    messages = [message for _, message in callbacks.events]
    assert "3 train examples: 1 desirable, 2 undesirable" in messages
    assert any(m.startswith("1 of 3 train examples were truncated") for m in messages)


def test_collate_lays_out_the_examples_or_their_mismatched_pairs(tokenizer):
    rows = [{"prompt": "ab", "completion": "X", "label": True}, {"prompt": "c", "completion": "YZ", "label": False}]
    examples = tokenize_feedback(rows, tokenizer, max_length=32, max_prompt_length=8, group_size=2)
    own = collate_feedback(examples, PAD, kl=False)
    assert own.input_ids.tolist() == [[BOS, *ids("ab"), ord("X"), EOS], [BOS, ord("c"), *ids("YZ"), EOS]]
    assert own.loss_mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert own.desirable.tolist() == [True, False]
    mismatched = collate_feedback(examples, PAD, kl=True)
    assert mismatched.input_ids.tolist() == [[BOS, *ids("ab"), *ids("YZ"), EOS],
                                             [BOS, ord("c"), ord("X"), EOS, PAD, PAD]]
    assert mismatched.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert mismatched.loss_mask.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
    assert torch.equal(mismatched.desirable, own.desirable)
