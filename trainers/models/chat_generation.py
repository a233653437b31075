"""Chat completions from a causal LM: messages through its chat template, then `transformers`' `generate`.

Sampling is the library's (temperature, top-p; temperature 0 decodes greedily); what is ours is
where a completion ends and what text it shows. A completion ends at EOS, at the first stop string
it produces (the string itself left out), or after `max_tokens`. The `n` completions are one batch
of `num_return_sequences` rows. A seeded request seeds torch's generator inside `fork_rng`, so the
same seed gives the same completions and unseeded requests keep drawing from the process's state.

Streaming runs the very same `generate` call with a per-token callback (a `BaseStreamer`), so a
stream's deltas concatenate to the text the same request returns without streaming.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from trainers.models.checkpoint import read_model_info
from trainers.models.loading import default_device, load_policy, stored_dtype
from trainers.models.model_cache import weight_bytes
from trainers.spec.errors import UserError
from trainers.spec.generation import GenerationRequest

DEFAULT_CONTEXT = 2048  # when the model's config states no context length
REPLACEMENT = "\ufffd"  # what decoding shows for the bytes of an unfinished character

OnDelta = Callable[[int, str], None]
"""Called with (choice index, new text) as a completion grows."""


@dataclass
class ChatModel:
    """A causal LM ready to generate, with what generation needs beside it; `weight_bytes` sizes it for caches."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    context_length: int
    eos_ids: frozenset[int]
    weight_bytes: int


def load_chat_model(ref: str) -> ChatModel:
    """Load a causal LM for `generate_chat`, on the GPU when there is one.

    Args:
        ref: a model reference `load_policy` understands: ``builtin:<name>``, a directory (full
            weights, or a LoRA adapter that is merged into the base it names), or a hub id.

    Returns:
        The model in eval mode on `default_device()` (in its stored precision on a GPU, float32 on
        the CPU), its tokenizer and its generation limits.

    Raises:
        UserError: (param ``model``) the reference cannot be loaded, is a reward model, or its
            tokenizer has no chat template.
    """
    if Path(ref).is_dir() and (read_model_info(ref) or {}).get("kind") == "reward_model":
        raise UserError(
            f"{ref} is a reward model, not a causal LM: it scores text but cannot generate it", param="model"
        )
    device = default_device()
    try:
        dtype = stored_dtype(ref) if device.type == "cuda" else torch.float32
        model, tokenizer = load_policy(ref, dtype=dtype)
    except UserError as exc:
        raise UserError(exc.message, param="model") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer of {ref} has no chat template, so messages cannot be rendered for it", param="model"
        )
    model.to(device).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = frozenset(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or DEFAULT_CONTEXT
    return ChatModel(model, tokenizer, device, context, eos_ids, weight_bytes(model))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, request: GenerationRequest) -> list[int]:
    """The request's messages rendered by the chat template with a generation prompt, as token ids."""
    from jinja2 import TemplateError

    messages = [m.model_dump() for m in request.messages]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # templates raise on conversations they do not take (a system turn, ...)
        raise UserError(f"messages: the model's chat template refused them: {exc}", param="messages") from exc
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template adds its own BOS


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string in it (left out), and whether there was one."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of a growing text that no later token can change: without a trailing unfinished
    character, and without a tail that may be the start of a stop string."""
    text = text.rstrip(REPLACEMENT)
    held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - held]


class _StopStrings(StoppingCriteria):
    """Ends each row whose completion holds a stop string, or every row once `should_stop()` says so."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        stops: list[str],
        prompt_length: int,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.tokenizer, self.stops, self.prompt_length, self.should_stop = tokenizer, stops, prompt_length, should_stop
        # A stop string ending in the newest token lies within its last 4 bytes per character
        # (a token holds at least one byte); decoding that tail alone keeps each step cheap.
        self.tail = 4 * max((len(s) for s in stops), default=0) + 4

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
        if self.should_stop is not None and self.should_stop():
            return ~done
        if self.stops:
            tails = input_ids[:, max(self.prompt_length, input_ids.shape[1] - self.tail) :]  # (B, ≤tail)
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            done |= torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)
        return done


class _DeltaStreamer(BaseStreamer):
    """Turns the tokens `generate` produces each step into text deltas per choice (`on_delta`)."""

    def __init__(self, chat: ChatModel, stops: list[str], rows: int, copies: int, on_delta: OnDelta) -> None:
        self.chat, self.stops, self.copies, self.on_delta = chat, stops, copies, on_delta
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.emitted = [""] * (rows * copies)  # what each choice has shown
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call hands over the prompt
            self.seen_prompt = True
            return
        tokens = value.reshape(-1).tolist()  # (B,): this step's token of each row
        for row, token in enumerate(tokens):
            if token == self.chat.tokenizer.pad_token_id:  # a finished row is padded
                continue
            self.ids[row].append(token)
            text, stopped = cut_at_stop(self.chat.tokenizer.decode(self.ids[row], skip_special_tokens=True), self.stops)
            self.emit(row, text if stopped else _safe_prefix(text, self.stops))

    def emit(self, row: int, text: str) -> None:
        """Send what `text` adds to what the choices of `row` have shown so far."""
        for index in range(row * self.copies, (row + 1) * self.copies):
            if len(text) > len(self.emitted[index]) and text.startswith(self.emitted[index]):
                self.on_delta(index, text[len(self.emitted[index]) :])
                self.emitted[index] = text

    def end(self) -> None:
        pass


@torch.no_grad()
def generate_chat(
    chat: ChatModel,
    request: GenerationRequest,
    *,
    on_delta: OnDelta | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Complete the request's conversation `request.n` times.

    Args:
        chat: the loaded model (`load_chat_model`).
        request: messages and sampling settings.
        on_delta: when given, called with (choice index, text) as each completion grows; the
            pieces of a choice concatenate to its final text.
        should_stop: polled every token; when it answers True, generation ends there (the
            completions so far are returned, finish reason "length").

    Returns:
        ``{"choices": [{"index", "text", "finish_reason": "stop" | "length", "completion_tokens"}],
        "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``; the prompt is counted
        once, completion tokens over all choices (EOS and the token that completed a stop string
        included).

    Raises:
        UserError: the prompt leaves no room in the model's context, or `max_tokens` exceeds it.
    """
    tokenizer = chat.tokenizer
    ids = prompt_ids(tokenizer, request)
    room = chat.context_length - len(ids)
    if room <= 0:
        raise UserError(
            f"messages: the prompt has {len(ids)} tokens and the model's context holds {chat.context_length}",
            param="messages",
        )
    if request.max_tokens is not None and request.max_tokens > room:
        raise UserError(
            f"max_tokens: {request.max_tokens} tokens do not fit the model's context of "
            f"{chat.context_length} after a prompt of {len(ids)} tokens (at most {room})",
            param="max_tokens",
        )
    max_new = request.max_tokens or min(room, request.default_max_tokens)
    sampled = request.temperature > 0
    rows = request.n if sampled else 1  # greedy decoding gives every choice the same text
    input_ids = torch.tensor([ids], device=chat.device)  # (1, P)
    streamer = _DeltaStreamer(chat, request.stop, rows, request.n // rows, on_delta) if on_delta else None
    settings = (
        dict(do_sample=True, temperature=request.temperature, top_p=request.top_p, top_k=0)
        if sampled
        else dict(do_sample=False)
    )
    with torch.random.fork_rng(devices=[chat.device] if chat.device.type == "cuda" else []):
        if request.seed is not None:
            torch.manual_seed(request.seed)
        out = chat.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            num_return_sequences=rows,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(chat.eos_ids),
            suppress_tokens=[tokenizer.pad_token_id],  # a pad is never a token of the answer
            stopping_criteria=StoppingCriteriaList([_StopStrings(tokenizer, request.stop, len(ids), should_stop)]),
            streamer=streamer,
            repetition_penalty=1.0,
            **settings,
        )  # (rows, P + A)
    choices = []
    for row, generated in enumerate(out[:, len(ids) :].tolist()):  # (A,) each
        tokens = (
            generated[: generated.index(tokenizer.pad_token_id)] if tokenizer.pad_token_id in generated else generated
        )
        text, stopped = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
        ended = stopped or (bool(tokens) and tokens[-1] in chat.eos_ids)
        for copy in range(request.n // rows):
            index = row * (request.n // rows) + copy
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "finish_reason": "stop" if ended else "length",
                    "completion_tokens": len(tokens),
                }
            )
        if streamer is not None:
            streamer.emit(row, text)
    completion_tokens = sum(c["completion_tokens"] for c in choices)
    return {
        "choices": choices,
        "usage": {
            "prompt_tokens": len(ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(ids) + completion_tokens,
        },
    }
