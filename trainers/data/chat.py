"""Chat rows of SFT jobs as token ids and a loss mask: which tokens the model is trained to predict.

A canonical chat row (`trainers.spec.chat_rows`) is either a conversation ``{"messages": [...]}`` or
``{"prompt": str, "completion": str}``.

- A conversation is rendered whole with the tokenizer's chat template and tokenised once. Each
  assistant message's tokens are found by rendering the conversation's prefixes, as TRL does:
  message i spans the text from the end of ``template(messages[:i], add_generation_prompt=True)``
  (the turn's header belongs to the prompt) to the end of ``template(messages[:i + 1])`` (its
  content and whatever closes the turn, e.g. EOS: the model must learn to stop). A token belongs to
  the span its first character falls in. Every prefix must render as a prefix of the whole
  conversation; a template that rewrites earlier turns (e.g. drops past reasoning) is a user error
  naming the row, rather than a silently wrong mask.
- A prompt/completion row is tokenised as the other trainers tokenise a prompt and a response
  (`trainers.data.tokenizing`): the prompt with the tokenizer's special tokens (e.g. BOS), then the
  completion and EOS.

With ``assistant_only_loss`` (the default) the loss mask is 1 on assistant spans (on the completion
and EOS); without it, on every token. An assistant message with ``weight: 0`` is left out of the loss
either way. The first token is never trained on: nothing predicts it. A row longer than
`max_length` keeps its first `max_length` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trainers.data.tokenizing import prompt_token_ids, report_truncated, response_token_ids
from trainers.spec.callbacks import Callbacks
from trainers.spec.errors import UserError
from trainers.spec.sft import SFTHyperparameters


@dataclass
class TokenizedChat:
    """One chat row as token ids, after truncation."""

    input_ids: list[int]  # (T,) T ≤ max_length
    loss_mask: list[int]  # (T,) 1 where token t is a training target (predicted at position t − 1); [0] is 0
    truncated: bool  # whether the row lost tokens to max_length

    @property
    def num_loss_tokens(self) -> int:
        """Tokens of the row the loss is computed on."""
        return sum(self.loss_mask)


def tokenize_chat(
    row: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    assistant_only_loss: bool,
    max_length: int,
    where: str = "row",
) -> TokenizedChat:
    """Token ids and loss mask of one canonical chat row, cut to `max_length`.

    Args:
        row: ``{"messages": [...]}`` or ``{"prompt": str, "completion": str}``.
        tokenizer: the model's tokenizer (conversations need its chat template; completions its EOS).
        assistant_only_loss: train on the assistant messages (the completion) only, or on every token.
        max_length: most tokens kept, from the start.
        where: the row, for error messages (``"train row 3"``).

    Returns:
        The row's `TokenizedChat`.

    Raises:
        UserError: a malformed row, a tokenizer without chat template or EOS, or a template that
            does not render a conversation's prefixes as prefixes of it.
    """
    if isinstance(row.get("messages"), list):
        ids, mask = conversation_tokens(row["messages"], tokenizer, assistant_only_loss=assistant_only_loss,
                                        where=where)  # fmt: skip
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        if tokenizer.eos_token_id is None:
            raise UserError("the model's tokenizer has no EOS token", param="base_model")
        prompt = prompt_token_ids(row["prompt"], tokenizer, where=where)
        completion = response_token_ids(row["completion"], tokenizer, where=f"{where}, field 'completion'")
        ids = prompt + completion
        mask = [int(not assistant_only_loss)] * len(prompt) + [1] * len(completion)
    else:
        raise UserError(f"{where}: expected 'messages' (a list of messages) or 'prompt' and 'completion' (strings)")
    if ids:
        mask[0] = 0  # nothing predicts the first token
    return TokenizedChat(input_ids=ids[:max_length], loss_mask=mask[:max_length], truncated=len(ids) > max_length)


def conversation_tokens(
    messages: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, *, assistant_only_loss: bool, where: str
) -> tuple[list[int], list[int]]:
    """A conversation rendered with the chat template, as token ids and a loss mask (see the module docstring).

    Args:
        messages: the conversation; assistant messages may carry ``weight`` (0 leaves them out of the loss).
        tokenizer: the model's tokenizer, with a chat template.
        assistant_only_loss: mask 1 on the assistant spans of weight 1 only, or on every token but
            the assistant spans of weight 0.
        where: the row, for error messages.

    Returns:
        (T,) token ids and (T,) loss mask, before truncation.

    Raises:
        UserError: no chat template, a template error, or prefixes that do not render as prefixes.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: conversations need a chat template, and the model's tokenizer has none",
                        param="base_model")  # fmt: skip
    turns = [{k: v for k, v in m.items() if k != "weight"} for m in messages]  # templates need not see weights
    full = _render(tokenizer, turns, where)
    spans: list[tuple[int, int, bool]] = []  # (start, end, trained) character spans of the assistant messages
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, turns[:i], where, add_generation_prompt=True)
        through = _render(tokenizer, turns[: i + 1], where)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(
                f"{where}: the model's chat template does not render the conversation up to message {i} as "
                "the start of the whole conversation (it rewrites earlier turns), so the assistant tokens "
                "cannot be told apart",
                param="base_model",
            )
        spans.append((len(before), len(through), message.get("weight", 1) != 0))
    ids, starts = _tokens_and_starts(tokenizer, full, [bound for lo, hi, _ in spans for bound in (lo, hi)])
    mask = []
    for start in starts:
        span = next((trained for lo, hi, trained in spans if lo <= start < hi), None)
        mask.append(int(span if span is not None else not assistant_only_loss))
    return ids, mask


def tokenize_chat_split(
    rows: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    hp: SFTHyperparameters,
    split: str,
    callbacks: Callbacks,
) -> list[TokenizedChat]:
    """`tokenize_chat` over a split with a job's settings, truncation and untrainable rows reported as warnings.

    Args:
        rows: canonical chat rows of one split.
        tokenizer: the model's tokenizer.
        hp: supplies `max_length` and `assistant_only_loss`.
        split: ``"train"`` or ``"eval"``, in messages.
        callbacks: receive a warning when rows were cut, and one when rows keep no trained token.

    Returns:
        One `TokenizedChat` per row, in order.

    Raises:
        UserError: a row is malformed (the message names it), or no training row has a token to train on.
    """
    chats = [
        tokenize_chat(row, tokenizer, assistant_only_loss=hp.assistant_only_loss, max_length=hp.max_length,
                      where=f"{split} row {i}")
        for i, row in enumerate(rows)
    ]  # fmt: skip
    report_truncated(callbacks, chats, split, f"rows were truncated (max_length={hp.max_length})")
    empty = sum(chat.num_loss_tokens == 0 for chat in chats)
    if empty and empty == len(chats) and split == "train":
        raise UserError(f"no training row has a token to train on within max_length={hp.max_length}",
                        param="hyperparameters.max_length")  # fmt: skip
    if empty:
        callbacks.on_event("warning", f"{empty} of {len(chats)} {split} rows have no token to train on "
                                      f"within max_length={hp.max_length}")  # fmt: skip
    return chats


@dataclass
class ChatBatch:
    """A micro-batch of chat rows for one forward pass, padded or packed.

    Padded: one row per sequence, right-padded to the longest. Packed: the rows laid end to end in
    sequences of at most `max_length` tokens (`pack_rows`), `position_ids` restarting at 0 at each
    row, and no attention mask, so transformers' packed-sequence attention (which reads the restarts
    in `position_ids`) keeps every row to itself; a sequence's padding is one more such row, trained on
    by nobody.
    """

    input_ids: Tensor  # (b, W) token ids, then pad_token_id
    loss_mask: Tensor  # (b, W) 1 where the token is a training target
    attention_mask: Tensor | None  # (b, W) 1 on real tokens (padded), or None (packed)
    position_ids: Tensor | None  # (b, W) 0… per row (packed), or None (padded: the model counts from 0)

    def to(self, device: torch.device) -> ChatBatch:
        """The same batch on `device`."""
        return ChatBatch(*(None if t is None else t.to(device) for t in
                           (self.input_ids, self.loss_mask, self.attention_mask, self.position_ids)))  # fmt: skip


@dataclass(frozen=True)
class ChatLayout:
    """How a run lays out its micro-batches (`collate_chats`)."""

    pad_token_id: int  # id written into padding positions
    packed: bool  # pack the rows (`pack_rows`) instead of padding each
    max_length: int  # the most tokens of a packed sequence
    flat: bool = False  # run packed sequences as one (FlashAttention reads packing from one sequence only)

    def collate(self, chats: Sequence[TokenizedChat]) -> ChatBatch:
        """`collate_chats` with this layout."""
        batch = collate_chats(chats, self.pad_token_id, packed=self.packed, max_length=self.max_length)
        if self.flat and batch.position_ids is not None:
            return ChatBatch(batch.input_ids.reshape(1, -1), batch.loss_mask.reshape(1, -1), None,
                             batch.position_ids.reshape(1, -1))  # fmt: skip
        return batch


def collate_chats(chats: Sequence[TokenizedChat], pad_token_id: int, *, packed: bool, max_length: int) -> ChatBatch:
    """Lay out a micro-batch's rows for one forward pass.

    Args:
        chats: the micro-batch's rows, each at most `max_length` tokens.
        pad_token_id: id written into padding positions.
        packed: pack the rows (`pack_rows`) instead of padding each.
        max_length: the most tokens of a packed sequence.

    Returns:
        The `ChatBatch`.
    """
    lengths = [len(c.input_ids) for c in chats]
    sequences = pack_rows(lengths, max_length) if packed else [[i] for i in range(len(chats))]
    width = max(sum(lengths[i] for i in rows) for rows in sequences)  # W
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (b, W)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (b, W)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (b, W)
    position_ids = torch.zeros((len(sequences), width), dtype=torch.long)  # (b, W)
    for s, rows in enumerate(sequences):
        column = 0
        for i in rows:
            n = lengths[i]
            input_ids[s, column : column + n] = torch.tensor(chats[i].input_ids, dtype=torch.long)
            loss_mask[s, column : column + n] = torch.tensor(chats[i].loss_mask, dtype=torch.long)
            attention_mask[s, column : column + n] = 1
            position_ids[s, column : column + n] = torch.arange(n)
            column += n
        position_ids[s, column:] = torch.arange(width - column)  # padding: a row of its own
    if packed:
        return ChatBatch(input_ids, loss_mask, None, position_ids)
    return ChatBatch(input_ids, loss_mask, attention_mask, None)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group rows into as few sequences of at most `capacity` tokens as first-fit decreasing finds.

    Args:
        lengths: (N,) tokens of each row, each at most `capacity`.
        capacity: the most tokens of a sequence.

    Returns:
        Sequences as lists of row indices (every row exactly once), each in ascending row order.
    """
    bins: list[tuple[int, list[int]]] = []  # (tokens, rows)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((b for b, (used, _) in enumerate(bins) if used + lengths[i] <= capacity), None)
        if slot is None:
            bins.append((lengths[i], [i]))
        else:
            used, rows = bins[slot]
            bins[slot] = (used + lengths[i], rows + [i])
    return [sorted(rows) for _, rows in bins]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], where: str, *, add_generation_prompt=False
) -> str:
    """The chat template's text for `messages`; a template error becomes a user error naming the row."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # Jinja's errors (raise_exception in a template, undefined values) have no common base
        raise UserError(f"{where}: the model's chat template cannot render this conversation: {exc}",
                        param="base_model") from exc  # fmt: skip


def _tokens_and_starts(
    tokenizer: PreTrainedTokenizerBase, text: str, cuts: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Token ids of a rendered text (its special tokens as the template wrote them) and each token's first character.

    A fast tokenizer tokenises the whole text and gives character offsets. Another tokenises the
    text piece by piece, cut at `cuts` (the span boundaries), so that no token straddles one; each
    piece's tokens start at the piece's start.
    """
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    ids: list[int] = []
    starts: list[int] = []
    bounds = sorted({0, len(text), *cuts})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        piece_ids = tokenizer(text[lo:hi], add_special_tokens=False)["input_ids"]
        ids += piece_ids
        starts += [lo] * len(piece_ids)
    return ids, starts
