"""Chat rows as token ids and loss masks (exact masks on builtin:tiny-llama's template), and their layouts."""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.data.chat import ChatLayout, TokenizedChat, collate_chats, pack_rows, tokenize_chat, tokenize_chat_split
from trainers.spec.config import SFTHyperparameters
from trainers.spec.errors import UserError

PAD, BOS, EOS, SYSTEM, USER, ASSISTANT = 256, 257, 258, 259, 260, 261  # builtin:tiny-llama; byte b is token b
NL = ord("\n")


@pytest.fixture
def tokenizer():
    return tiny()[1]


def ids(text):
    return [ord(c) for c in text]


def turn(role_token, text):
    """A turn as the tiny template renders it: ``<|role|>\\n{text}</s>``."""
    return [role_token, NL, *ids(text), EOS]


def chat(*messages, **row):
    return {"messages": [{"role": role, "content": content, **extra} for role, content, *rest in messages
                         for extra in [rest[0] if rest else {}]], **row}  # fmt: skip


CONVERSATION = chat(("system", "S"), ("user", "hi"), ("assistant", "yo", {"weight": 0}), ("user", "q"),
                    ("assistant", "ab"))  # fmt: skip
CONVERSATION_IDS = [BOS, *turn(SYSTEM, "S"), *turn(USER, "hi"), *turn(ASSISTANT, "yo"), *turn(USER, "q"),
                    *turn(ASSISTANT, "ab")]  # fmt: skip


def test_assistant_only_loss_trains_the_content_and_end_of_weighted_assistant_turns(tokenizer):
    row = tokenize_chat(CONVERSATION, tokenizer, assistant_only_loss=True, max_length=64)
    assert row.input_ids == CONVERSATION_IDS
    # The header <|assistant|>\n belongs to the prompt; "yo" has weight 0; "ab</s>" is trained.
    assert row.loss_mask == [0] * (len(CONVERSATION_IDS) - 3) + [1, 1, 1]
    assert row.num_loss_tokens == 3 and not row.truncated


def test_every_assistant_turn_without_weight_is_trained(tokenizer):
    rows = chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "de"))
    row = tokenize_chat(rows, tokenizer, assistant_only_loss=True, max_length=64)
    assert row.input_ids == [BOS, *turn(USER, "a"), *turn(ASSISTANT, "b"), *turn(USER, "c"), *turn(ASSISTANT, "de")]
    assert row.loss_mask == [0] * 5 + [0, 0, 1, 1] + [0] * 4 + [0, 0, 1, 1, 1]


def test_without_assistant_only_loss_every_token_but_the_first_and_weight_0_turns_is_trained(tokenizer):
    row = tokenize_chat(CONVERSATION, tokenizer, assistant_only_loss=False, max_length=64)
    weight_0 = len([BOS, *turn(SYSTEM, "S"), *turn(USER, "hi"), ASSISTANT, NL])  # "yo</s>" starts here
    expected = [1] * len(CONVERSATION_IDS)
    expected[0] = 0
    expected[weight_0 : weight_0 + 3] = [0, 0, 0]
    assert row.loss_mask == expected


def test_prompt_completion_rows_train_the_completion_and_eos(tokenizer):
    row = tokenize_chat({"prompt": "2+2=", "completion": "4"}, tokenizer, assistant_only_loss=True, max_length=64)
    assert row.input_ids == [BOS, *ids("2+2="), ord("4"), EOS]
    assert row.loss_mask == [0, 0, 0, 0, 0, 1, 1]
    everything = tokenize_chat({"prompt": "2+2=", "completion": "4"}, tokenizer, assistant_only_loss=False,
                               max_length=64)  # fmt: skip
    assert everything.loss_mask == [0, 1, 1, 1, 1, 1, 1]
    empty_prompt = tokenize_chat({"prompt": "", "completion": "ab"}, tokenizer, assistant_only_loss=True, max_length=64)
    assert (empty_prompt.input_ids, empty_prompt.loss_mask) == ([BOS, *ids("ab"), EOS], [0, 1, 1, 1])


def test_long_rows_keep_their_first_max_length_tokens(tokenizer):
    row = tokenize_chat(CONVERSATION, tokenizer, assistant_only_loss=True, max_length=22)
    assert row.input_ids == CONVERSATION_IDS[:22] and row.truncated
    assert row.loss_mask == [0] * 21 + [1]  # only "a" of the last turn is left
    cut = tokenize_chat({"prompt": "abc", "completion": "d"}, tokenizer, assistant_only_loss=True, max_length=3)
    assert (cut.input_ids, cut.loss_mask, cut.num_loss_tokens) == ([BOS, *ids("ab")], [0, 0, 0], 0)


def test_tool_turns_and_message_keys_reach_the_template_but_weights_do_not(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}{{ m.get('weight', '') }}]{{ m['content'] }}"
                               "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    row = chat(("user", "q"), ("assistant", "c", {"weight": 1}), ("tool", "t"), ("assistant", "d"))
    out = tokenize_chat(row, tokenizer, assistant_only_loss=True, max_length=64)
    assert out.input_ids == [*ids("[user]q"), EOS, *ids("[assistant]c"), EOS, *ids("[tool]t"), EOS,
                             *ids("[assistant]d"), EOS]  # fmt: skip
    assert [t for t, m in zip(out.input_ids, out.loss_mask, strict=True) if m] == [ord("c"), EOS, ord("d"), EOS]


def test_a_template_that_rewrites_earlier_turns_is_a_user_error_naming_the_row(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    # Like templates that drop past reasoning: the last turn renders differently from an earlier one.
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}"
                               "{% endfor %}")  # fmt: skip
    with pytest.raises(UserError, match="train row 2: the model's chat template does not render"):
        tokenize_chat(chat(("user", "q"), ("assistant", "a"), ("user", "r"), ("assistant", "b")), tokenizer,
                      assistant_only_loss=True, max_length=64, where="train row 2")  # fmt: skip


def test_rows_need_a_template_and_a_known_shape(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match="need a chat template"):
        tokenize_chat(CONVERSATION, bare, assistant_only_loss=True, max_length=64)
    with pytest.raises(UserError, match="row: expected 'messages'"):
        tokenize_chat({"text": "x"}, tokenizer, assistant_only_loss=True, max_length=64)


class SlowTokenizer:
    """The tiny tokenizer without character offsets, as a tokenizer that is not fast."""

    is_fast = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_tokenizer_without_offsets_gets_the_same_tokens_and_mask(tokenizer):
    for assistant_only_loss in (True, False):
        fast = tokenize_chat(CONVERSATION, tokenizer, assistant_only_loss=assistant_only_loss, max_length=64)
        slow = tokenize_chat(CONVERSATION, SlowTokenizer(tokenizer), assistant_only_loss=assistant_only_loss,
                             max_length=64)  # fmt: skip
        assert (slow.input_ids, slow.loss_mask) == (fast.input_ids, fast.loss_mask)


class Events:
    def __init__(self):
        self.events = []

    def on_event(self, level, message):
        self.events.append((level, message))


def test_a_split_reports_cut_and_untrainable_rows_and_refuses_training_data_with_none_trainable(tokenizer):
    hp = SFTHyperparameters(max_length=8)
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "abcdefgh", "completion": "i"}]
    events = Events()
    chats = tokenize_chat_split(rows, tokenizer, hp, "eval", events)
    assert [c.num_loss_tokens for c in chats] == [2, 0]
    assert events.events == [("warning", "1 of 2 eval rows were truncated (max_length=8)"),
                             ("warning", "1 of 2 eval rows have no token to train on within max_length=8")]
    with pytest.raises(UserError, match="no training row has a token to train on"):
        tokenize_chat_split(rows[1:], tokenizer, hp, "train", Events())


# --- layouts ----------------------------------------------------------------------------------------


def rows_of(*lengths):
    return [TokenizedChat(input_ids=[10 * (i + 1) + t for t in range(n)], loss_mask=[0] + [1] * (n - 1),
                          truncated=False) for i, n in enumerate(lengths)]  # fmt: skip


def test_pack_rows_is_first_fit_decreasing():
    assert pack_rows([3, 5, 2, 4, 1], 6) == [[1, 4], [2, 3], [0]]  # 5+1, 4+2, 3
    assert pack_rows([6, 6], 6) == [[0], [1]]
    assert pack_rows([1, 1, 1], 8) == [[0, 1, 2]]


def test_padded_rows_are_right_padded_with_an_attention_mask():
    batch = collate_chats(rows_of(2, 3), PAD, packed=False, max_length=8)
    assert batch.input_ids.tolist() == [[10, 11, PAD], [20, 21, 22]]
    assert batch.loss_mask.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 0], [1, 1, 1]] and batch.position_ids is None


def test_packed_rows_restart_their_positions_and_pad_as_a_row_of_their_own():
    batch = collate_chats(rows_of(3, 2, 4, 1), PAD, packed=True, max_length=5)
    # Bins of at most 5 tokens: rows 2 and 3 (4 + 1), rows 0 and 1 (3 + 2).
    assert batch.input_ids.tolist() == [[30, 31, 32, 33, 40], [10, 11, 12, 20, 21]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 0, 1]]
    assert batch.attention_mask is None
    padded = collate_chats(rows_of(3, 4), PAD, packed=True, max_length=5)  # 3 + 4 > 5: two sequences
    assert padded.input_ids.tolist() == [[20, 21, 22, 23], [10, 11, 12, PAD]]
    assert padded.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert padded.loss_mask.tolist() == [[0, 1, 1, 1], [0, 1, 1, 0]]


def test_a_flat_layout_runs_the_packed_sequences_as_one():
    layout = ChatLayout(pad_token_id=PAD, packed=True, max_length=5, flat=True)
    batch = layout.collate(rows_of(3, 4))
    assert batch.input_ids.tolist() == [[20, 21, 22, 23, 10, 11, 12, PAD]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1, 0, 1, 1, 0]] and batch.attention_mask is None
    unpacked = ChatLayout(pad_token_id=PAD, packed=False, max_length=5, flat=True).collate(rows_of(3, 4))
    assert unpacked.input_ids.shape == (2, 4)  # flat applies to packed batches only
    assert torch.equal(batch.to(torch.device("cpu")).input_ids, batch.input_ids)
