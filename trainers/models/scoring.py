"""Score texts or prompt/response pairs with a saved reward-model checkpoint.

Items are tokenised exactly as training tokenises a prompt and its chosen response (through
`tokenize_pairs`), so a score here is the reward the model learnt for that row. A text is scored
as a prompt with an empty response: the tokenizer's own special tokens (BOS), the text, then EOS.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.models.checkpoint import read_model_info
from trainers.models.lora import ADAPTER_CONFIG, is_adapter_dir
from trainers.models.reward import load_reward_model, rewards
from trainers.spec.errors import UserError
from trainers.spec.score_items import score_rows

REWARD_MODEL_KIND = "reward_model"
DEFAULT_MAX_LENGTH = 2048  # when the model's config states no context length


@dataclass
class RewardScorer:
    """A loaded reward model with what scoring needs beside it; `weight_bytes` sizes it for caches."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: dict[str, Any]  # the checkpoint's rlhf_service.json (reward statistics), or {}
    max_length: int
    weight_bytes: int  # parameters and buffers


def score(model_dir: Path, items: list[dict[str, Any]], *, batch_size: int = 16) -> list[dict[str, float]]:
    """Reward of each item under the reward model saved in `model_dir`.

    Args:
        model_dir: a checkpoint's ``model/`` directory (full weights, or a LoRA adapter whose
            config names its base model).
        items: ``{"text": str}`` (scored as it is, EOS appended) or ``{"prompt": P, "response": R}``
            with P and R strings or message lists, rendered as training renders prompt + chosen.
        batch_size: items per forward pass.

    Returns:
        One ``{"score": r, "normalized": (r − mean) / std}`` per item, in order, with the reward
        statistics recorded at the checkpoint; ``normalized`` is left out when the directory has
        no statistics.

    Raises:
        UserError: the directory is not a reward model, or an item is malformed (naming it).
    """
    score_rows(items)  # malformed items fail before the model loads
    return score_with(load_scorer(model_dir), items, batch_size=batch_size)


def load_scorer(model_dir: Path) -> RewardScorer:
    """Load the reward model saved in `model_dir` for `score_with`.

    Args:
        model_dir: a checkpoint's ``model/`` directory (full weights, or a LoRA adapter).

    Returns:
        The model in eval mode, its tokenizer, the checkpoint's model info and the model's size.

    Raises:
        UserError: the directory is missing or does not hold a reward model.
    """
    model_dir = Path(model_dir)
    info = _reward_model_info(model_dir)
    model, tokenizer = load_reward_model(model_dir)  # an adapter is merged into the base it names
    max_length = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return RewardScorer(model, tokenizer, info, max_length, weight_bytes)


@torch.no_grad()
def score_with(scorer: RewardScorer, items: list[dict[str, Any]], *, batch_size: int = 16) -> list[dict[str, float]]:
    """Reward of each item under a loaded reward model; arguments and result as in `score`."""
    rows = score_rows(items)
    tokenizer = scorer.tokenizer
    # One pair per item with the item as its chosen response; only the chosen rows are scored.
    pairs = tokenize_pairs(rows, tokenizer, max_length=scorer.max_length, max_prompt_length=scorer.max_length - 1,
                           split="score")  # fmt: skip
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate_pairs(chunk, tokenizer.pad_token_id)  # 2b rows, chosen first
        b = len(chunk)
        scores += rewards(scorer.model, batch.input_ids[:b], batch.attention_mask[:b]).tolist()  # (b,)
    mean, std = scorer.info.get("reward_mean"), scorer.info.get("reward_std")
    if not (_finite(mean) and _finite(std) and std > 0):
        return [{"score": s} for s in scores]
    return [{"score": s, "normalized": (s - mean) / std} for s in scores]


def _reward_model_info(model_dir: Path) -> dict[str, Any]:
    """The directory's `rlhf_service.json` (empty when absent), after checking it is a reward model."""
    if not model_dir.is_dir():
        raise UserError(f"{model_dir} is not a directory", param="model_dir")
    info = read_model_info(model_dir)
    if info is not None:
        if info.get("kind") != REWARD_MODEL_KIND:
            raise UserError(f"{model_dir} holds a {info.get('kind')!r} model, not a reward model", param="model_dir")
        return info
    # A directory from elsewhere: a sequence-classification model, or an adapter for one.
    if is_adapter_dir(model_dir):
        is_classifier = _read_json(model_dir / ADAPTER_CONFIG).get("task_type") == "SEQ_CLS"
    else:
        architectures = _read_json(model_dir / "config.json").get("architectures") or []
        is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if not is_classifier:
        raise UserError(f"{model_dir} is not a reward model: it has no sequence-classification head", param="model_dir")
    return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
