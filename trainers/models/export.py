"""Export a checkpoint's model as one plain Hugging Face model: a LoRA adapter merged into its base.

The service calls this for ``GET /v1/checkpoints/{id}/download?merged=true`` (through
``python -m trainers merge``), so a LoRA job's result can be used without peft.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.models.checkpoint import read_model_info, write_model_info
from trainers.models.loading import load_policy
from trainers.models.lora import is_adapter_dir, load_merged
from trainers.spec.errors import ModelNotFoundError, UserError


def merge_checkpoint(model_dir: Path, out_dir: Path) -> None:
    """Write the model of `model_dir` as a full model (adapter merged into its base) into `out_dir`.

    `out_dir` receives safetensors weights, the config, the tokenizer and an
    ``rlhf_service.json`` equal to the source's with ``"adapter": false``. A directory that
    already holds a full model is written out unchanged in content.

    Args:
        model_dir: a checkpoint's ``model/`` directory (a peft adapter or a full model).
        out_dir: where to write; created if missing, and expected to be empty.

    Raises:
        ModelNotFoundError: `model_dir`, or the base model its adapter names, cannot be loaded.
        UserError: the model's kind (from ``rlhf_service.json``) is unknown.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise ModelNotFoundError(f"{model_dir} is not a model directory", param="model_dir")
    info = read_model_info(model_dir) or {"kind": "causal_lm", "adapter": is_adapter_dir(model_dir)}
    model, tokenizer = _load_merged_of_kind(model_dir, info.get("kind"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    write_model_info(out_dir, info | {"adapter": False})


def _load_merged_of_kind(model_dir: Path, kind: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `model_dir` as a plain model with the loader its kind needs."""
    match kind:
        case "causal_lm":
            return load_policy(model_dir)  # merges an adapter into its base
        case "reward_model":
            from trainers.models.reward import load_reward_model  # only reward models need it

            if is_adapter_dir(model_dir):
                return load_merged(model_dir, load_reward_model)
            return load_reward_model(model_dir)
        case _:
            raise UserError(f"{model_dir} holds a model of unknown kind {kind!r}", param="model_dir")
