"""Low-rank adapters (peft) on any trainer's model: wrap, resume, and merge into the base.

An adapter checkpoint is peft's ``save_pretrained`` directory (``adapter_config.json``,
``adapter_model.safetensors``); its config names the reference of the base model it was trained on
(`trainers.models.checkpoint.save_checkpoint` sets it to the job's `base_model`), so the base can be
loaded again from that reference alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.models.checkpoint import MODEL_DIR
from trainers.spec.config import JobSpec, LoRAConfig
from trainers.spec.errors import ModelNotFoundError

TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}
ADAPTER_CONFIG = "adapter_config.json"  # what marks a directory as a peft adapter

Loader = Callable[[str | Path], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
"""Loads a model reference (e.g. `trainers.models.loading.load_policy`): (model, tokenizer)."""


def base_of(model: nn.Module) -> nn.Module:
    """The model under `model`'s adapters: the transformers model of a peft model, else `model` itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def apply_lora(
    model: PreTrainedModel, config: LoRAConfig | None, *, task: Literal["causal_lm", "seq_cls"]
) -> PreTrainedModel | PeftModel:
    """Wrap `model` with fresh LoRA adapters, or return it unchanged when `config` is None.

    Only adapter weights (and, for sequence classification, the score head, which peft keeps
    trainable for that task type) require gradients afterwards. The adapters' initial weights
    come from torch's global generator: seed it first for a reproducible run.

    Args:
        model: the base model, not yet wrapped.
        config: the job's LoRA settings, or None for full fine-tuning.
        task: "causal_lm" for policies, "seq_cls" for reward models.

    Returns:
        The peft-wrapped model, or `model` itself.
    """
    if config is None:
        return model
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules or "all-linear",
        task_type=TASK_TYPES[task],
    )
    return get_peft_model(model, peft_config)


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a directory holding a peft adapter rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_trainable_model(
    load: Loader, job: JobSpec, resume_from: str | Path | None, *, task: Literal["causal_lm", "seq_cls"]
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """The model a run trains, and its tokenizer.

    A fresh run loads the job's base model and, for a LoRA job, wraps it in new adapters. A
    resumed run loads the checkpoint's model: its full weights, or for a LoRA job the base model
    with the checkpoint's adapter, trainable again.

    Args:
        load: loads a model reference (the base model, or a saved full model).
        job: supplies `base_model` and `lora`.
        resume_from: the checkpoint directory to resume from (its ``model/`` is read), or None.
        task: the adapter's task type, as in `apply_lora`.

    Returns:
        The model (CPU; a peft model for LoRA jobs) and its tokenizer.

    Raises:
        ModelNotFoundError: the base model or the checkpoint's model cannot be loaded.
    """
    if resume_from is None:
        model, tokenizer = load(job.base_model)
        return apply_lora(model, job.lora, task=task), tokenizer
    model_dir = Path(resume_from) / MODEL_DIR
    if job.lora is None:
        return load(model_dir)
    base, tokenizer = load(job.base_model)
    return _with_adapter(base, model_dir, trainable=True), tokenizer


def load_merged(adapter_dir: str | Path, load_base: Loader) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an adapter directory as one plain model: its base with the adapter merged in.

    ``W = W_base + (alpha / r)·B·A`` in every adapted layer (peft's ``merge_and_unload``); the
    result has no peft wrapper and saves as an ordinary full model.

    Args:
        adapter_dir: a peft ``save_pretrained`` directory whose config names its base.
        load_base: loads the base model reference (a causal LM or a reward model loader).

    Returns:
        The merged model and the base's tokenizer.

    Raises:
        ModelNotFoundError: the adapter names no base, or the base or adapter cannot be loaded.
    """
    base_ref = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base_ref:
        raise ModelNotFoundError(f"the adapter in {adapter_dir} does not name its base model")
    base, tokenizer = load_base(base_ref)
    merged = _with_adapter(base, Path(adapter_dir), trainable=False).merge_and_unload()
    # peft froze the base's weights while it wrapped them; as a plain model they are trainable
    # again, like those of any other loaded model.
    return merged.requires_grad_(True).eval(), tokenizer


def _with_adapter(base: PreTrainedModel, adapter_dir: Path, *, trainable: bool) -> PeftModel:
    try:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"could not load the adapter in {adapter_dir}: {exc}") from exc
