"""How a run computes: its precision, attention kernel and gradient checkpointing (`ComputeSettings`).

`resolve_compute` turns the job's ``precision``, ``attn_implementation`` and
``gradient_checkpointing`` into what this device can do, refusing what it cannot with a
`UserError` that names the field. Mixed precision follows PyTorch's automatic mixed precision
(https://pytorch.org/docs/stable/amp.html): the trained models keep fp32 master weights and fp32
AdamW state, their forward passes run under ``torch.autocast`` in bf16 or fp16, and fp16 scales
the loss (``torch.amp.GradScaler``, stepped by `trainers.loop.TrainingLoop.update`) so that small
gradients do not underflow. Frozen models (the reference policy, reward models scoring rollouts)
hold their weights in the compute type itself: they never step, so they need no fp32 master copy.

A trainer holds its run's autocast context (`trainers.run_setup.PreparedRun.autocast`) around its
whole loop, sampling and evaluation included. Autocast keeps the low-precision copies of the
trained weights it makes until its context exits, so `TrainingLoop.update` drops them after each
optimizer step (``torch.clear_autocast_cache``): the next forward casts the updated weights.

``precision="auto"`` on the CPU is fp32 without autocast, so a CPU run computes what it always did.
"""

from __future__ import annotations

import contextlib
import importlib.util
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PeftModel
from torch import nn

from trainers.models.lora import base_of
from trainers.spec.config import LoopHyperparameters
from trainers.spec.errors import UserError

Precision = Literal["fp32", "bf16", "fp16"]
COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_PARAM = "hyperparameters.precision"
ATTENTION_PARAM = "hyperparameters.attn_implementation"


@dataclass(frozen=True)
class ComputeSettings:
    """What a run resolved its precision and memory settings to.

    Attributes:
        precision: ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"`` (autocast in that type,
            fp32 master weights and optimizer state).
        attn_implementation: the attention kernel the models use (``"sdpa"``, ``"eager"``,
            ``"flash_attention_2"``); None keeps each architecture's own default (sdpa where it
            has it, else eager).
        gradient_checkpointing: whether the trained models recompute activations in the backward pass.
        device: where the run computes.
        checkpoint_dtype: the type checkpoints write a full model's weights in (the base model's);
            None writes them as they are.
    """

    precision: Precision
    attn_implementation: str | None
    gradient_checkpointing: bool
    device: torch.device
    checkpoint_dtype: torch.dtype | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The type forward passes compute in, and frozen models are held in."""
        return COMPUTE_DTYPES[self.precision]

    @property
    def scales_loss(self) -> bool:
        """Whether the loss is scaled before backward (fp16 only: bf16 has fp32's exponent range)."""
        return self.precision == "fp16"

    def autocast(self) -> AbstractContextManager:
        """The context every forward pass of the run runs in: autocast in the compute type, none for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled for fp16 only (disabled, it passes losses and gradients through unchanged)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scales_loss)

    def prepare_trained(self, model: nn.Module) -> nn.Module:
        """Set up a trained model, in place: fp32 master weights, this attention kernel, checkpointing if asked."""
        model.to(torch.float32)
        set_attention(model, self.attn_implementation)
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model

    def prepare_frozen(self, model: nn.Module) -> nn.Module:
        """Set up a frozen model, in place: held in the compute type (it never steps), this attention kernel."""
        set_attention(model, self.attn_implementation)
        return model.to(self.compute_dtype)

    def describe(self) -> str:
        """One line for the run's events: ``precision bf16 (autocast, fp32 master weights), attention sdpa, ...``."""
        match self.precision:
            case "fp32":
                precision = "precision fp32"
            case "bf16":
                precision = "precision bf16 (autocast, fp32 master weights)"
            case "fp16":
                precision = "precision fp16 (autocast, fp32 master weights, loss scaling)"
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return (f"{precision}, attention {self.attn_implementation}, gradient checkpointing {checkpointing}, "
                f"device {self.device.type}")  # fmt: skip


def flash_attention_installed() -> bool:
    """Whether the ``flash_attn`` package can be imported (it is an optional extra, CUDA only)."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_compute(hp: LoopHyperparameters, device: torch.device) -> ComputeSettings:
    """The job's precision and memory settings, resolved for `device`.

    ``precision="auto"``: bf16 on a CUDA device that supports it, else fp32. ``attn_implementation="auto"``:
    flash_attention_2 on CUDA when flash_attn is installed, else the architecture's default (sdpa
    where transformers has it for the architecture, eager otherwise).

    Args:
        hp: the job's hyperparameters.
        device: where the run computes.

    Returns:
        The resolved settings; their `checkpoint_dtype` is left unset (the run sets it to the base
        model's stored type once the model has loaded).

    Raises:
        UserError: bf16 on a CUDA device without bf16 support, or flash_attention_2 off CUDA or
            without the flash_attn package; the error names the field.
    """
    cuda = device.type == "cuda"
    precision = hp.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    elif precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bf16; use precision fp16 or fp32", param=PRECISION_PARAM)
    attention = None if hp.attn_implementation == "auto" else hp.attn_implementation
    if hp.attn_implementation == "auto" and cuda and flash_attention_installed():
        attention = "flash_attention_2"
    elif attention == "flash_attention_2" and not (cuda and flash_attention_installed()):
        where = "the flash_attn package is not installed" if cuda else f"training runs on {device.type}, not CUDA"
        raise UserError(f"flash_attention_2 is not available: {where}; use sdpa or eager", param=ATTENTION_PARAM)
    return ComputeSettings(
        precision=precision, attn_implementation=attention, device=device,
        gradient_checkpointing=hp.gradient_checkpointing,
    )  # fmt: skip


def enable_tf32(device: torch.device) -> None:
    """Let fp32 matmuls on a CUDA device use TF32 tensor cores; on other devices it does nothing."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_attention(model: nn.Module, attn_implementation: str | None) -> None:
    """Make `model` (possibly peft-wrapped) attend with `attn_implementation`, in place; None leaves it be.

    Raises:
        UserError: the architecture has no such implementation; the error names the field.
    """
    if attn_implementation is None:
        return
    inner = base_of(model)
    try:
        inner.set_attn_implementation(attn_implementation)
    except (ValueError, ImportError) as exc:
        raise UserError(f"{type(inner).__name__} cannot use {attn_implementation} attention: {exc}",
                        param=ATTENTION_PARAM) from exc  # fmt: skip


def attention_of(model: nn.Module) -> str:
    """The attention implementation `model` (possibly peft-wrapped) runs with."""
    inner = base_of(model)
    return inner.config._attn_implementation


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute `model`'s activations in the backward pass (non-reentrant checkpointing), in place.

    transformers' ``activation_checkpointing_enable`` (formerly ``gradient_checkpointing_enable``).

    The model must be in train mode for it to apply. Under LoRA the embeddings are frozen, so their
    output is made to require gradients, as peft needs for checkpointed layers to pass gradients on.

    Args:
        model: a trained model, possibly peft-wrapped.
    """
    inner = base_of(model)
    inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if isinstance(model, PeftModel):
        inner.enable_input_require_grads()
