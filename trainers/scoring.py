"""Score texts or prompt/response pairs with a saved reward-model checkpoint.

Items are tokenised exactly as training tokenises a prompt and its chosen response (through
`tokenize_pairs`), so a score here is the reward the model learnt for that row. A text is scored
as a prompt with an empty response: the tokenizer's own special tokens (BOS), the text, then EOS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint import read_model_info
from trainers.errors import UserError
from trainers.lora import ADAPTER_CONFIG, is_adapter_dir
from trainers.preference_data import collate_pairs, tokenize_pairs
from trainers.reward_model import load_reward_model, rewards

REWARD_MODEL_KIND = "reward_model"
DEFAULT_MAX_LENGTH = 2048  # when the model's config states no context length


@torch.no_grad()
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
    model_dir = Path(model_dir)
    rows = [_as_row(item, i) for i, item in enumerate(items)]
    info = _reward_model_info(model_dir)
    model, tokenizer = load_reward_model(model_dir)  # an adapter is merged into the base it names
    max_length = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    # One pair per item with the item as its chosen response; only the chosen rows are scored.
    pairs = tokenize_pairs(rows, tokenizer, max_length=max_length, max_prompt_length=max_length - 1, split="score")
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate_pairs(chunk, tokenizer.pad_token_id)  # 2b rows, chosen first
        b = len(chunk)
        scores += rewards(model, batch.input_ids[:b], batch.attention_mask[:b]).tolist()  # (b,)
    mean, std = info.get("reward_mean"), info.get("reward_std")
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


def _as_row(item: Any, index: int) -> dict[str, Any]:
    """A preference row whose chosen response is the item (the rejected one is never scored)."""
    if isinstance(item, dict) and set(item) == {"text"} and isinstance(item["text"], str):
        return {"prompt": item["text"], "chosen": "", "rejected": ""}
    if isinstance(item, dict) and set(item) == {"prompt", "response"}:
        return {"prompt": item["prompt"], "chosen": item["response"], "rejected": item["response"]}
    raise UserError(f"item {index}: expected {{'text': str}} or {{'prompt': ..., 'response': ...}}", param="items")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
