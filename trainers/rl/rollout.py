"""Sampling responses from a causal LM for PPO and GRPO (DESIGN §7); `trainers.rl.response_logprobs` recomputes
their log-probs.

`generate` is a sampling loop of its own over the model's KV cache rather than `model.generate`:
HF's `generate` draws from the global RNG and cannot take a `torch.Generator`, so a rollout
would not be a function of the job's seed; and owning the loop guarantees that the log-probs it
records are computed exactly as every later pass computes them.

**Each row's randomness is its own.** Every row gets `max_new_tokens` uniforms up front (from its
own seed, `row_uniforms`, or from one generator for the batch) and step t picks the token whose
cumulative probability first exceeds ``u_t`` (inverse-CDF sampling, `inverse_cdf_sample`): a row's
tokens depend on its seed and its logits only, not on the rows sampled beside it, so a rank that
samples its share of a rollout draws exactly the tokens one process draws for those rows.

**One temperature for every pass.** The sampling log-probs are ``log softmax(logits / τ)`` of the
chosen tokens, before top-p filtering: the distribution the policy defines at temperature τ, which
is what `trainers.rl.response_logprobs` recomputes. The old-policy, reference and training passes must all use
the same τ, or the PPO ratio compares two different distributions and is not 1 on the first epoch.
In float32 the two agree to 1e-5, so PPO takes log π_old from the sampling pass there, as TRL's
PPOTrainer takes it from its generation's logits (`trainers.rl.online.reuses_sampling_logprobs`);
in bfloat16 the cached and the full pass round differently (about 3e-3 on builtin:tiny-llama), so
log π_old is then recomputed by `response_logprobs` and `Rollout.logprobs` serve monitoring.

**Decoding steps.** Each token after the first is `decode_step`: the last token's forward over the
KV cache, then `next_token`. Eagerly it runs over the model's own cache; with `StaticDecoding` the
prompts' keys and values move to a static cache (`trainers.rl.static_cache`) and the step may be
compiled (`trainers.rl.generation.compiled`). Whether every row has finished is read every
`stop_check_interval` tokens, not after each: the only host synchronisations of the loop.

Layout: prompts are left-padded to P tokens and responses right-padded to A tokens, so a full row
is ``[pad… prompt | response pad…]`` and every response starts at column P. Position ids count
real tokens only (``cumsum(mask) − 1``), in generation and in `response_logprobs` alike, so a
prompt's padding changes neither its tokens nor its log-probs.
Shapes: B sequences, P prompt tokens, A response tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainers.distributed.ranks import Ranks
from trainers.rl.static_cache import StaticDecoding, static_cache_into


@dataclass
class Rollout:
    """A batch of prompts and the responses sampled for them.

    Attributes:
        prompt_ids: (B, P) long, left-padded with the pad id.
        prompt_mask: (B, P) long, 1 on real prompt tokens.
        response_ids: (B, A) long, right-padded with the pad id after EOS (EOS itself is kept).
        response_mask: (B, A) long, 1 on response tokens up to and including EOS.
        logprobs: (B, A) float32, ``log softmax(logits / temperature)`` of each sampled token
            (before top-p), 0 on padding.
        ended_with_eos: (B,) bool, False where the response was cut at `max_new_tokens`.
        response_lengths: (B,) long, response tokens including EOS (``response_mask.sum(1)``).
        temperature: τ the responses were sampled at; every later pass must divide by it.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ended_with_eos: Tensor
    response_lengths: Tensor
    temperature: float

    def model_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Prompt and response as one batch, for a single forward pass of any model.

        Returns:
            input_ids: (B, P + A) long.
            attention_mask: (B, P + A) long, 1 on real tokens.
            position_ids: (B, P + A) long, ``cumsum(attention_mask) − 1`` (0 on left padding),
                the positions the tokens had during generation.
        """
        input_ids = torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, P+A)
        attention_mask = torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (B, P+A)
        return input_ids, attention_mask, positions_from_mask(attention_mask)

    def last_token_positions(self) -> Tensor:
        """Column of each row's last real token in `model_inputs`: where a reward model reads its score.

        Returns:
            (B,) long, ``P + response_length − 1`` (the last prompt token for an empty response).
        """
        return self.prompt_ids.shape[1] + self.response_lengths - 1


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count real tokens only: ``cumsum(mask) − 1``, 0 on leading padding.

    Args:
        attention_mask: (B, T) 1 on real tokens.

    Returns:
        (B, T) long.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token id lists into a batch.

    Args:
        prompt_ids: B non-empty lists of token ids.
        pad_token_id: filler for the padding.

    Returns:
        ids: (B, P) long, P the longest prompt.
        mask: (B, P) long, 1 on real tokens.
    """
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # (B, P)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def row_uniforms(row_seeds: Sequence[int], steps: int, device: torch.device) -> Tensor:
    """Each row's uniforms, from a CPU generator of its own seed (the same draws on any device).

    Args:
        row_seeds: B seeds, one per row.
        steps: uniforms per row (one per sampled token).
        device: where the result goes.

    Returns:
        (B, steps) float64 in [0, 1).
    """
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in row_seeds]
    return torch.stack(rows).to(device)  # (B, steps)


def inverse_cdf_sample(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Draw one token per row by inverting its CDF: the first token whose cumulative probability exceeds ``u·Σp``.

    With u uniform in [0, 1) the token is drawn with probability p; a token of probability 0 (cut
    by top-p) is never drawn.

    Args:
        probs: (B, V) non-negative probabilities (rows need not sum to exactly 1).
        uniforms: (B,) uniforms in [0, 1).

    Returns:
        (B,) long token ids.
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(1)  # (B, 1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(1)  # (B,) first index with cdf > target
    # u·Σp can round up to Σp itself: fall back on the last token that has mass.
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).long().argmax(dim=-1)  # (B,)
    return torch.minimum(token, last)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020, https://arxiv.org/abs/1904.09751): keep the fewest
    most probable tokens whose probability adds up to at least `top_p`, set the others to −inf.

    A token is kept when the tokens more probable than it hold less than `top_p` of the mass; the
    most probable token is therefore always kept (``top_p → 0`` is greedy decoding). The same set
    as HF's `TopPLogitsWarper`.

    Args:
        logits: (B, V) scores (already divided by the temperature).
        top_p: in (0, 1]; 1 keeps every token.

    Returns:
        (B, V) the logits with the removed tokens at −inf.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of the strictly more probable tokens
    remove_sorted = mass_before >= top_p  # (B, V)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # (B, V) vocabulary order
    return logits.masked_fill(remove, float("-inf"))


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
    stop_check_interval: int = 16,
    ranks: Ranks | None = None,
    static: StaticDecoding | None = None,
) -> Rollout:
    """Sample a response for each prompt, one token per step over the KV cache.

    Each step draws ``y ~ top_p(softmax(logits / τ))`` by inverse-CDF sampling with the row's next
    uniform (`row_uniforms` of `row_seeds`, or drawn from `generator` for the whole batch), and
    records ``log softmax(logits / τ)[y]`` (`next_token`). A row stops at its first EOS: later steps
    write pad ids that the response mask leaves out. To avoid one host synchronisation per token,
    whether every row has finished is read only every `stop_check_interval` steps; the result does
    not depend on it, since a finished row's extra steps are masked and trimmed. The model runs in
    whatever mode it is in (turn dropout off, as PPO's ratio assumes the rollout and training passes
    agree).

    With `static` (`StaticDecoding`, its step usually compiled: `trainers.rl.generation.compiled`)
    the prompts' keys and values move to a static cache (`static_cache_into`) and every later token
    runs through its step with tensors of the same shapes at every step, and in every call of the
    same batch size, which a compiled graph (and a CUDA graph) replays without a recompile; a model
    whose cache layers are not all plain full-attention layers keeps its own cache and runs eagerly.

    On several ranks each samples its own rows and the ranks agree at every check (and on the
    prefill's form), so each runs the same forwards: every forward of a parallel model is a
    collective. Sampling goes on until every rank's rows have finished.

    Args:
        model: a causal LM taking ``input_ids, attention_mask, position_ids, cache, use_cache,
            logits_to_keep`` and returning ``logits`` and ``cache`` (every transformers causal LM,
            and peft wrappers of one).
        prompt_ids: B prompts as token id lists (already truncated to fit).
        pad_token_id: fills the padding; must not be an EOS id.
        eos_token_id: the id, or ids, that end a response.
        max_new_tokens: most tokens per response (EOS included).
        temperature: τ > 0; logits are divided by it. Later passes must use the same τ.
        top_p: nucleus sampling threshold in (0, 1]; a tiny value decodes greedily.
        generator: draws (B, `max_new_tokens`) uniforms up front, when `row_seeds` is not given;
            the same generator state, model and prompts give the same rollout.
        row_seeds: one seed per row, each row's only source of randomness (`row_uniforms`): a
            row's tokens then do not depend on the other rows of the batch.
        stop_check_interval: steps between checks that every row has finished; 0 never checks
            (always `max_new_tokens` steps).
        ranks: the job's processes, when the model is spread over them (default: one).
        static: decode over a static cache with its step (`decode_step` or a compiled copy);
            None runs `decode_step` eagerly over the model's own (dynamic) cache.

    Returns:
        The rollout, its responses trimmed to the longest one.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}; use a tiny top_p to decode greedily")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if (generator is None) == (row_seeds is None):
        raise ValueError("generate needs exactly one of generator and row_seeds")
    ranks = ranks or Ranks()
    device = next(model.parameters()).device
    eos_ids = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    prompt, prompt_mask = left_pad(prompt_ids, pad_token_id)
    prompt, prompt_mask = prompt.to(device), prompt_mask.to(device)  # (B, P)
    B, P = prompt.shape
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, max_new_tokens)], dim=1)  # (B, P+N)
    positions = positions_from_mask(prompt_mask)  # (B, P)
    if row_seeds is not None:
        uniforms = row_uniforms(row_seeds, max_new_tokens, device)  # (B, N)
    else:
        uniforms = torch.rand((B, max_new_tokens), generator=generator, dtype=torch.float64,
                              device=generator.device).to(device)  # fmt: skip

    out = _prefill(model, prompt_ids, prompt, prompt_mask, positions, pad_token_id, ranks)
    cache, step_fn, static_cache = out.cache, decode_step, None
    if static is not None:
        length = max(P + max_new_tokens, static.length)
        static_cache = static.cache = static_cache_into(model, out.cache, length, reuse=static.cache)
    if static_cache is not None:  # its whole length is attended to: the keys past the decoded token are the future
        cache, step_fn = static_cache, static.step_fn
        attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(B, length - P)], dim=1)  # (B, L)
    sampling = {"temperature": temperature, "top_p": top_p, "pad_token_id": pad_token_id, "eos_ids": eos_ids}
    position = positions[:, -1:] + 1  # (B, 1)
    responses = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # (B, N)
    logprobs = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)  # (B, N)
    response_mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)  # (B, N)
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
    token, logprob, now_finished = next_token(out.logits[:, -1], uniforms[:, 0], finished, **sampling)  # (B,) each
    steps = max_new_tokens
    for step in range(max_new_tokens):
        responses[:, step] = token
        response_mask[:, step] = (~finished).long()
        logprobs[:, step] = logprob
        finished = now_finished
        if step + 1 == max_new_tokens:
            break
        if stop_check_interval and (step + 1) % stop_check_interval == 0 and all_finished(finished, ranks):
            steps = step + 1
            break
        mask = attention_mask if static_cache is not None else attention_mask[:, : P + step + 1]  # (B, L) | (B, P+t+1)
        if static_cache is not None and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are copied out
        token, logprob, now_finished = step_fn(model, token, mask, position, cache, uniforms[:, step + 1], finished,
                                               **sampling)  # fmt: skip
        position = position + 1

    lengths = response_mask[:, :steps].sum(dim=1)  # (B,)
    width = max(int(lengths.max()), 1)  # one synchronisation, to trim the all-padding columns
    return Rollout(
        prompt_ids=prompt,
        prompt_mask=prompt_mask,
        response_ids=responses[:, :width],
        response_mask=response_mask[:, :width],
        logprobs=logprobs[:, :width],
        ended_with_eos=finished.clone(),
        response_lengths=lengths,
        temperature=temperature,
    )


def next_token(
    logits: Tensor, uniforms: Tensor, finished: Tensor, *, temperature: float, top_p: float, pad_token_id: int,
    eos_ids: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One sampling step: each row's token, its log-prob, and which rows have finished after it.

    Args:
        logits: (B, V) the last position's logits, in the model's dtype.
        uniforms: (B,) float64, each row's uniform for this step.
        finished: (B,) bool, rows that ended before this step: they get the pad id and log-prob 0.
        temperature: τ.
        top_p: nucleus threshold.
        pad_token_id: the finished rows' token.
        eos_ids: (E,) the stop ids.

    Returns:
        token: (B,) long; logprob: (B,) float32 ``log softmax(logits / τ)[token]`` (0 for finished
        rows); finished: (B,) bool, updated with the rows whose token is a stop id.
    """
    # Divided in the model's dtype, then widened: the same rounding as `response_logits`.
    scaled = (logits / temperature).float()  # (B, V)
    step_logprobs = torch.log_softmax(scaled, dim=-1)  # (B, V) recorded before top-p
    probs = torch.softmax(top_p_filter(scaled, top_p), dim=-1)  # (B, V)
    token = inverse_cdf_sample(probs, uniforms).masked_fill(finished, pad_token_id)  # (B,)
    alive = ~finished  # (B,)
    logprob = step_logprobs.gather(1, token.unsqueeze(1)).squeeze(1) * alive  # (B,)
    return token, logprob, finished | (alive & torch.isin(token, eos_ids))


def decode_step(
    model: nn.Module, token: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any, uniforms: Tensor,
    finished: Tensor, *, temperature: float, top_p: float, pad_token_id: int, eos_ids: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One decoding step: the forward of the last sampled token over the cache, then `next_token`.

    The unit `torch.compile` compiles (`trainers.rl.generation.compiled`): over a static cache its
    inputs have the same shapes at every step.

    Args:
        model: the causal LM.
        token: (B,) the tokens sampled last.
        attention_mask: (B, K) 1 on real tokens: K the cached tokens plus this one (dynamic cache),
            or the static cache's length.
        position_ids: (B, 1) the token's position.
        cache: the model's cache (`out.cache` of the previous forward), updated in place.
        uniforms, finished, temperature, top_p, pad_token_id, eos_ids: as `next_token`.

    Returns:
        What `next_token` returns, for the next position.
    """
    out = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                use_cache=True)  # fmt: skip
    return next_token(out.logits[:, -1], uniforms, finished, temperature=temperature, top_p=top_p,
                      pad_token_id=pad_token_id, eos_ids=eos_ids)  # fmt: skip


def all_finished(finished: Tensor, ranks: Ranks) -> bool:
    """Whether every row of every rank has finished (one host synchronisation, a collective on several ranks)."""
    running = (~finished).any().long().reshape(1)  # (1,)
    return int(ranks.max(running)) == 0


def _prefill(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    prompt: Tensor,
    prompt_mask: Tensor,
    positions: Tensor,
    pad_token_id: int,
    ranks: Ranks,
) -> Any:
    """The prompts' forward pass over a fresh KV cache, each distinct prompt computed once.

    GRPO samples G completions of every prompt: the distinct prompts run once and their cache rows
    and last logits are copied to every row that repeats them (a cache without row selection runs
    every row). On several ranks all take the same path (one forward each), repeated rows or not.

    Returns:
        The model output for all B rows: ``logits`` (B, 1, V) and ``cache``.
    """
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids]  # (B,) row → distinct prompt
    repeated = len(distinct) < len(source)
    if ranks.distributed:  # one rank's repeats must not give it a different number of forwards
        repeated = bool(ranks.max(torch.tensor([int(repeated)], device=prompt.device)))
    if repeated:
        ids, mask = left_pad(list(distinct), pad_token_id)  # (U, P): the same P, the longest prompt is among them
        ids, mask = ids.to(prompt.device), mask.to(prompt.device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        if hasattr(out.cache, "batch_select_indices"):
            index = torch.tensor(source, dtype=torch.long, device=prompt.device)  # (B,)
            out.cache.batch_select_indices(index)
            out.logits = out.logits[index]  # (B, 1, V)
            return out
    return model(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
