"""Low-rank adapters (peft) on any trainer's model: one call to wrap, the config from `LoRAConfig`."""

from __future__ import annotations

from typing import Literal

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from trainers.config import LoRAConfig

TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}


def apply_lora(
    model: PreTrainedModel, config: LoRAConfig | None, *, task: Literal["causal_lm", "seq_cls"]
) -> PreTrainedModel | PeftModel:
    """Wrap `model` with fresh LoRA adapters, or return it unchanged when `config` is None.

    Only adapter weights (and, for sequence classification, the score head, which peft keeps
    trainable for that task type) require gradients afterwards.

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
