import pytest
import torch

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.data.preference import collate_pairs, tokenize_pairs, truncate_pair
from trainers.spec.errors import UserError

BOS, EOS, PAD = 257, 258, 256  # builtin:tiny-llama; byte b is token b


@pytest.fixture
def tokenizer():
    return tiny()[1]


def tokenize(rows, tokenizer, max_length=64, max_prompt_length=32):
    return tokenize_pairs(rows, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)


def test_string_rows_get_bos_prompt_and_eos_terminated_responses(tokenizer):
    (pair,) = tokenize([{"prompt": "ab", "chosen": "CD", "rejected": "e"}], tokenizer)
    assert tokenizer.pad_token_id == PAD != tokenizer.eos_token_id == EOS
    assert pair.prompt_ids == [BOS, ord("a"), ord("b")]
    assert pair.chosen_ids == [ord("C"), ord("D"), EOS]
    assert pair.rejected_ids == [ord("e"), EOS]
    assert not pair.truncated


def test_collate_puts_chosen_first_pads_right_and_masks_the_prompt(tokenizer):
    pairs = tokenize(
        [{"prompt": "ab", "chosen": "CD", "rejected": "e"}, {"prompt": "x", "chosen": "Y", "rejected": "zzz"}],
        tokenizer,
    )
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    a, b, C, D, e, x, Y, z = (ord(c) for c in "abCDexYz")
    assert batch.num_pairs == 2
    assert batch.input_ids.tolist() == [
        [BOS, a, b, C, D, EOS],  # chosen of pair 0
        [BOS, x, Y, EOS, PAD, PAD],  # chosen of pair 1
        [BOS, a, b, e, EOS, PAD],  # rejected of pair 0
        [BOS, x, z, z, z, EOS],  # rejected of pair 1
    ]
    assert batch.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6]
    assert batch.loss_mask.tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
    ]


def test_truncation_keeps_the_prompt_end_and_the_response_start(tokenizer):
    row = {"prompt": "0123456789", "chosen": "ABCDEFGH", "rejected": "ab"}
    (pair,) = tokenize([row], tokenizer, max_length=8, max_prompt_length=4)
    # prompt: [BOS] + 10 bytes = 11 tokens → last 4; responses get 8 − 4 = 4 tokens
    assert pair.prompt_ids == [ord(c) for c in "6789"]
    assert pair.chosen_ids == [ord(c) for c in "ABCD"]  # EOS cut off with the rest
    assert pair.rejected_ids == [ord("a"), ord("b"), EOS]  # fits: untouched
    assert pair.truncated
    assert len(pair.prompt_ids) + len(pair.chosen_ids) == 8


def test_only_the_response_is_cut_when_the_prompt_fits():
    pair = truncate_pair([1, 2, 3], [4, 5, 6, 7, 8], [9], max_length=6, max_prompt_length=4)
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, pair.truncated) == ([1, 2, 3], [4, 5, 6], [9], True)
    pair = truncate_pair([1, 2, 3], [4], [9], max_length=6, max_prompt_length=4)
    assert not pair.truncated


def test_conversational_rows_use_the_chat_template_and_mask_the_rendered_prompt(tokenizer):
    row = {
        "prompt": [{"role": "system", "content": "be loud"}, {"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "HELLO"}],
        "rejected": [{"role": "assistant", "content": "hello"}],
    }
    (pair,) = tokenize([row], tokenizer)
    rendered = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert rendered == "<s><|system|>\nbe loud</s><|user|>\nhi</s><|assistant|>\n"
    assert pair.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert pair.prompt_ids.count(BOS) == 1
    assert pair.chosen_ids == [ord(c) for c in "HELLO"] + [EOS]

    batch = collate_pairs([pair], tokenizer.pad_token_id)
    scored = batch.input_ids[0][batch.loss_mask[0].bool()]
    assert tokenizer.decode(scored) == "HELLO</s>"
    assert tokenizer.decode(batch.input_ids[0][~batch.loss_mask[0].bool()]) == rendered


def test_several_assistant_messages_are_joined_by_newlines(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}],
        "rejected": [{"role": "assistant", "content": "c"}],
    }
    (pair,) = tokenize([row], tokenizer)
    assert pair.chosen_ids == [ord("A"), ord("\n"), ord("B"), EOS]


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"prompt": "p", "chosen": "c"}, "train row 1: missing field 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "train row 1, field 'chosen'"),
        ({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}, "train row 1, field 'prompt'"),
    ],
)
def test_malformed_rows_name_the_row(tokenizer, row, fragment):
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        tokenize([good, row], tokenizer)


def test_batch_moves_to_a_device(tokenizer):
    pairs = tokenize([{"prompt": "a", "chosen": "b", "rejected": "c"}], tokenizer)
    batch = collate_pairs(pairs, PAD).to(torch.device("cpu"))
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (2, 4)


def test_shared_prompt_rows_lay_a_pair_out_once_with_the_two_row_positions_and_context(tokenizer):
    (pair,) = tokenize([{"prompt": "ab", "chosen": "CD", "rejected": "e"}], tokenizer)
    batch = collate_pairs([pair], PAD, shared_prompt=True)
    (rows,) = batch.shared
    E = ord("e")
    assert rows.input_ids.tolist() == [[BOS, ord("a"), ord("b"), ord("C"), ord("D"), EOS, E, EOS]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 3, 4]]  # rejected continues from the prompt
    mask = rows.attention_mask[0, 0]
    assert mask[6].tolist() == [True, True, True, False, False, False, True, False]  # not the chosen response
    assert mask[3].tolist() == [True, True, True, True, False, False, False, False]  # causal
    assert mask[7].tolist() == [True, True, True, False, False, False, True, True]
    assert rows.ends.tolist() == [5, 7] and rows.end_rows.tolist() == [0, 1]


def test_shared_prompt_padding_attends_to_itself_only(tokenizer):
    rows = [{"prompt": "ab", "chosen": "CD", "rejected": "e"}, {"prompt": "a", "chosen": "C", "rejected": "e"}]
    pairs = tokenize(rows, tokenizer)
    (rows,) = collate_pairs(pairs, PAD, shared_prompt=True).shared
    assert rows.input_ids[1].tolist() == [BOS, ord("a"), ord("C"), EOS, ord("e"), EOS, PAD, PAD]
    mask = rows.attention_mask[1, 0]
    assert mask[6].tolist() == [False] * 6 + [True, False] and mask[7].tolist() == [False] * 7 + [True]
    assert rows.ends.tolist() == [5, 7, 11, 13] and rows.end_rows.tolist() == [0, 2, 1, 3]
