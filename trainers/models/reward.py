"""Reward models: a decoder with a one-output score head, read at the last real token of each row.

The score head maps every position's final hidden state to a scalar; a sequence's reward is the
score at its last attended position (for preference rows: the EOS after the response). The index
comes from the attention mask, never from the pad token id, so a pad id that also occurs in the
text (or any padding width) cannot move it.

A model spread over a job's ranks (`trainers.distributed.sharding`) reads its rewards the same way:
the backbone and the head run inside one forward of the model's root FSDP unit (`as_root_forward`),
and `reward_stats` scores each rank's share of the pairs and combines the ranks' sums.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import register_fsdp_forward_method
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trainers.data.batching import bucket_overhead_tokens, map_buckets
from trainers.data.preference import SharedPromptRows, TokenizedPair, collate_pairs
from trainers.distributed.ranks import Ranks
from trainers.distributed.sharding import is_parallel
from trainers.models.loading import (
    BUILTIN_PREFIX,
    attention_mask_for,
    ensure_pad_token,
    load_policy,
    packs_exactly,
    require_hub_model,
)
from trainers.models.lora import base_of, is_adapter_dir, load_merged
from trainers.spec.errors import ModelNotFoundError, UserError

SCORE_HEAD_SEED = 1  # seed of the private generator that initialises a fresh score head
# The name under which `as_root_forward` briefly registers a computation as a forward of the root FSDP unit.
ROOT_FORWARD_METHOD = "rlhf_reward_forward"


def load_reward_model(
    ref: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a sequence-classification reward model (one output) and its tokenizer.

    ``builtin:tiny-llama`` becomes a `LlamaForSequenceClassification` whose backbone holds the
    built-in causal LM's weights; a local directory or hub id is loaded with
    ``AutoModelForSequenceClassification.from_pretrained(ref, num_labels=1)`` (a saved reward
    model loads as it is). A directory holding a LoRA adapter of a reward model (a LoRA job's
    checkpoint) loads as its base, itself resolved by this function from the reference the
    adapter names, with the adapter (and its trained score head) merged in. A score head that the
    reference does not hold is drawn from N(0, initializer_range²) by a generator seeded with
    `SCORE_HEAD_SEED`, so every load of the same reference gives the same weights.

    Args:
        ref: ``builtin:<name>``, a directory written by ``save_pretrained``, or a hub id (read
            from the local cache first).
        dtype: floating-point type of the weights.

    Returns:
        The model (CPU, eval mode, ``config.pad_token_id`` set) and its tokenizer, whose pad token
        is distinct from EOS (added, with one more embedding row, when it was missing or EOS).

    Raises:
        ModelNotFoundError: the reference is unknown or cannot be loaded; the message names it.
    """
    ref = str(ref)
    if ref.startswith(BUILTIN_PREFIX):
        model, tokenizer = _builtin(ref)
        model = model.to(dtype)
    elif is_adapter_dir(ref):
        return load_merged(ref, functools.partial(load_reward_model, dtype=dtype))  # the base got its pad token
    else:
        local = Path(ref).is_dir()
        try:
            model, tokenizer = _from_pretrained(ref, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            if local:
                raise ModelNotFoundError(f"could not load model {ref!r}: {exc}") from exc
            require_hub_model(ref)
            try:
                model, tokenizer = _from_pretrained(ref, dtype=dtype, local_files_only=False)
            except (OSError, ValueError, KeyError) as exc2:
                raise ModelNotFoundError(f"could not load model {ref!r}: {exc2}") from exc2
    ensure_pad_token(model, tokenizer, ref=ref)
    model.eval()
    return model, tokenizer


def rewards(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, buckets: Sequence[tuple[Tensor, int]] = ()
) -> Tensor:
    """Scalar reward of each row: the score head's output at the row's last attended position.

    ``r_n = score(h_{n, t_n})`` with ``t_n = max{t : attention_mask[n, t] = 1}``.

    Args:
        model: a reward model from `load_reward_model`, possibly wrapped by peft.
        input_ids: (N, T) token ids, padded on either side.
        attention_mask: (N, T) 1 on real tokens, 0 on padding; every row has a real token.
        buckets: ``(row indices, width)`` groups of right-padded rows run as separate forwards cut
            to their width (`trainers.data.batching.map_buckets`); empty for one forward over all rows.

    Returns:
        (N,) float32 rewards, differentiable w.r.t. the model's parameters.
    """
    backbone, head = backbone_and_head(model)

    def scores_at_last_token(ids: Tensor, mask: Tensor) -> Tensor:
        hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (n, T, H)
        last = last_token_index(mask)  # (n,)
        hidden = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)  # (n, H)
        return head(hidden).squeeze(-1).float()  # (n,) the head only where it is read

    return as_root_forward(model, map_buckets, scores_at_last_token, buckets, input_ids, attention_mask)


def shared_prompt_rewards(model: nn.Module, groups: Sequence[SharedPromptRows], num_rows: int) -> Tensor:
    """`rewards` of a preference batch's 2B rows, computed on its shared-prompt rows.

    Each pair is one row ``prompt ⊕ chosen ⊕ rejected`` under a 4D mask (`SharedPromptRows`): the
    chosen reward is read at the chosen response's last token, the rejected one at the row's last
    real token, each seeing exactly what it sees in its own row.

    Args:
        model: a reward model the packed rows are exact for (`shares_prompts`).
        groups: the batch's `PreferenceBatch.shared` groups.
        num_rows: 2B.

    Returns:
        (2B,) float32 rewards, chosen rows first, differentiable.
    """
    backbone, head = backbone_and_head(model)

    def scores_of_groups() -> Tensor:
        out = None
        for group in groups:
            mask = attention_mask_for(model, group.attention_mask)
            hidden = backbone(input_ids=group.input_ids, attention_mask=mask, position_ids=group.position_ids,
                              use_cache=False).last_hidden_state  # (b, W, H)  # fmt: skip
            scores = head(hidden.reshape(-1, hidden.shape[-1])[group.ends]).squeeze(-1).float()  # (2b,)
            part = torch.zeros(num_rows, dtype=scores.dtype, device=scores.device).index_add(0, group.end_rows, scores)
            out = part if out is None else out + part
        return out

    return as_root_forward(model, scores_of_groups)


def as_root_forward(model: nn.Module, compute: Callable[..., Tensor], *args: object) -> Tensor:
    """``compute(*args)``, run as a forward of the transformers model under `model`'s adapters.

    A model spread over ranks gathers the parameters of its root FSDP unit (embeddings, final
    norm, score head) only in hooks around that unit's forward (and, for the backward, on that
    forward's output): the backbone and the head called one after the other, outside the model's
    own ``forward``, would meet sharded parameters. `compute` is therefore registered as a forward
    method of the root for the call (`register_fsdp_forward_method`). On one process it is just
    called.

    Args:
        model: a reward model, possibly wrapped by peft, possibly spread over ranks.
        compute: reads rewards through `backbone_and_head`.
        args: its arguments.

    Returns:
        What `compute` returns.
    """
    if not is_parallel(model):
        return compute(*args)
    inner = base_of(model)
    setattr(inner, ROOT_FORWARD_METHOD, compute)
    try:
        register_fsdp_forward_method(inner, ROOT_FORWARD_METHOD)
        return getattr(inner, ROOT_FORWARD_METHOD)(*args)
    finally:
        delattr(inner, ROOT_FORWARD_METHOD)


def shares_prompts(model: nn.Module, pairs: Sequence[TokenizedPair]) -> bool:
    """Whether `shared_prompt_rewards` gives `model`'s own rewards on `pairs`.

    The packed rows' 4D mask states full causal attention, which a sliding-window model applies
    only to sequences no longer than its window (`trainers.models.loading.packs_exactly`); longer pairs
    run as two rows each, under the model's own mask.

    Args:
        model: the reward model.
        pairs: every pair it will read (training and evaluation).
    """
    longest = max((len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs), default=0)
    return packs_exactly(model, longest)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of each row's last real token: ``max{t : attention_mask[n, t] = 1}``.

    Args:
        attention_mask: (N, T) 1 on real tokens, 0 on padding.

    Returns:
        (N,) long indices (0 for a row without any real token).
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (positions * attention_mask.long()).argmax(dim=1)  # (N,)


def stats_sample(num_pairs: int, size: int, seed: int) -> list[int]:
    """A fixed sample of pair indices for the reward statistics: the same for every checkpoint.

    Args:
        num_pairs: training pairs available.
        size: most pairs to take.
        seed: seed of the private generator.

    Returns:
        ``min(size, num_pairs)`` distinct indices, ascending.
    """
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(num_pairs, generator=generator)[:size].tolist())


@torch.no_grad()
def reward_stats(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    *,
    batch_size: int,
    device: torch.device,
    ranks: Ranks | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation of the rewards of both responses of every pair, in eval mode.

    ``mean = (1/2n)·Σ (r_c + r_r)``, ``std = sqrt((1/2n)·Σ (r − mean)²)`` over the 2n rewards
    (population std). PPO and GRPO normalise this model's rewards with them. On several ranks each
    scores its share of every batch of ``batch_size · world_size`` pairs, in one forward (the
    same number of forwards on every rank), and both sums are taken over ranks: every rank gets
    the statistics of all the pairs.

    Args:
        model: the reward model (restored to its previous train/eval mode afterwards).
        pairs: the tokenised pairs to score.
        pad_token_id: padding id.
        batch_size: pairs per forward (per rank).
        device: where the model is.
        ranks: the job's processes (default: one).

    Returns:
        ``(mean, std)`` as Python floats.
    """
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    overhead = None if ranks.distributed else bucket_overhead_tokens(device.type)
    size = batch_size * ranks.world_size
    scored = [torch.zeros(0, dtype=torch.float64, device=device)]
    for start in range(0, len(pairs), size):
        mine, weight = ranks.batch_share(pairs[start : start + size])
        batch = collate_pairs(mine, pad_token_id, bucket_overhead_tokens=overhead).to(device)
        r = rewards(model, batch.input_ids, batch.attention_mask, batch.buckets)  # (2b,)
        if weight:
            scored.append(r.double())
    model.train(was_training)
    mine_rewards = torch.cat(scored)  # (2m,) this rank's share of the 2n rewards
    count = 2 * len(pairs)
    mean = ranks.sum(mine_rewards.sum()) / count
    variance = ranks.sum(((mine_rewards - mean) ** 2).sum()) / count
    return mean.item(), variance.sqrt().item()


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the `score` head of a (possibly peft-wrapped) reward model."""
    inner = base_of(model)
    head = getattr(inner, "score", None)
    if not isinstance(head, nn.Module):
        raise UserError(
            f"{type(inner).__name__} has no 'score' head; reward models need a decoder with a "
            "sequence-classification head (e.g. LlamaForSequenceClassification)",
            param="base_model",
        )
    return inner.base_model, head  # peft's copy of the head is used through its wrapper


def _builtin(ref: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The built-in causal LM's backbone under a freshly, deterministically initialised score head."""
    causal, tokenizer = load_policy(ref)  # names the known builtin models when `ref` is not one
    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):  # construction runs the library's own random init
        model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(causal.base_model.state_dict())
    _init_score_head(model)
    return model, tokenizer


def _from_pretrained(
    ref: str, *, dtype: torch.dtype, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=local_files_only)
    with torch.random.fork_rng(devices=[]):  # a missing head gets the library's random init first
        model, info = AutoModelForSequenceClassification.from_pretrained(
            ref, num_labels=1, dtype=dtype, local_files_only=local_files_only, output_loading_info=True
        )
    if any(key.startswith("score.") for key in info["missing_keys"]):
        _init_score_head(model)
    return model, tokenizer


def _init_score_head(model: PreTrainedModel) -> None:
    """Draw the score head from N(0, initializer_range²) with a private seeded generator."""
    std = getattr(model.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(SCORE_HEAD_SEED)
    with torch.no_grad():
        for param in model.score.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                param.zero_()
