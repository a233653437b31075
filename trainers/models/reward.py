"""Reward models: a decoder with a one-output score head, read at the last real token of each row.

The score head maps every position's final hidden state to a scalar; a sequence's reward is the
score at its last attended position (for preference rows: the EOS after the response). The index
comes from the attention mask, never from the pad token id, so a pad id that also occurs in the
text (or any padding width) cannot move it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trainers.data.batching import bucket_overhead_tokens, map_buckets
from trainers.data.preference import SharedPromptRows, TokenizedPair, collate_pairs
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

    return map_buckets(scores_at_last_token, buckets, input_ids, attention_mask)


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
    out = None
    for group in groups:
        mask = attention_mask_for(model, group.attention_mask)
        hidden = backbone(input_ids=group.input_ids, attention_mask=mask, position_ids=group.position_ids,
                          use_cache=False).last_hidden_state  # (b, W, H)  # fmt: skip
        scores = head(hidden.reshape(-1, hidden.shape[-1])[group.ends]).squeeze(-1).float()  # (2b,)
        part = torch.zeros(num_rows, dtype=scores.dtype, device=scores.device).index_add(0, group.end_rows, scores)
        out = part if out is None else out + part
    return out


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
    model: nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int, *, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean and standard deviation of the rewards of both responses of every pair, in eval mode.

    ``mean = (1/2n)·Σ (r_c + r_r)``, ``std = sqrt((1/2n)·Σ (r_c² + r_r²) − mean²)`` (population
    std over the 2n rewards). PPO and GRPO normalise this model's rewards with them.

    Args:
        model: the reward model (restored to its previous train/eval mode afterwards).
        pairs: the tokenised pairs to score.
        pad_token_id: padding id.
        batch_size: pairs per forward.
        device: where the model is.

    Returns:
        ``(mean, std)`` as Python floats.
    """
    was_training = model.training
    model.eval()
    overhead = bucket_overhead_tokens(device.type)
    scored = []
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start : start + batch_size], pad_token_id, bucket_overhead_tokens=overhead)
        batch = batch.to(device)
        scored.append(rewards(model, batch.input_ids, batch.attention_mask, batch.buckets))  # (2b,)
    model.train(was_training)
    all_rewards = torch.cat(scored).double()  # (2n,)
    return all_rewards.mean().item(), all_rewards.std(correction=0).item()


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
