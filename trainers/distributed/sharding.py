"""Spreading a trained model over the job's ranks with FSDP2, and gathering it back for checkpoints.

Both strategies are `torch.distributed.fsdp.fully_shard` (FSDP2), applied in place layer by layer
(each transformer block, then the whole model), so the model keeps its class and methods (a peft
model still disables its adapters, ``generate`` still works):

- ``ddp``: every rank holds the whole model and its optimizer state; gradients are all-reduced.
  This is FSDP2 over a (replicas × 1) mesh: each "shard" is the whole parameter, which is data
  parallelism with DDP's arithmetic, written with the same calls as ``fsdp``.
- ``fsdp``: parameters, gradients and optimizer state are split over the ranks; each block's
  parameters are all-gathered for its forward and backward and freed after, so a rank holds about
  1/N of the model's training state.

Checkpoints stay one Hugging Face directory whatever the strategy: `full_model_state` gathers the
full weights to rank 0 (on the CPU), and `optimizer_state` / `load_optimizer_state` speak
`torch.distributed.checkpoint`'s full, name-keyed optimizer state, which a run of any process
count (one included) can load: a 2-process run resumes on 1 process and back.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from trainers.distributed.ranks import Ranks
from trainers.models.lora import base_of

Strategy = Literal["ddp", "fsdp"]
# Bytes per trained parameter beside its weight: an fp32 gradient and AdamW's two fp32 moments.
TRAINING_BYTES_PER_PARAMETER = 4 + 8
# The share of a device's memory the weights and optimizer state may take before `auto` shards
# them: the rest is for activations, the reference and the rollout.
AUTO_FSDP_FRACTION = 0.5


def training_state_bytes(model: nn.Module) -> int:
    """Bytes of `model`'s weights, plus gradients and AdamW state of the parameters it trains."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return weights + trained * TRAINING_BYTES_PER_PARAMETER


def device_memory_bytes(device: torch.device) -> int:
    """Memory one rank may use: its GPU's, or on the CPU the host's shared by the node's ranks."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolve_strategy(asked: str, model: nn.Module, ranks: Ranks, device: torch.device) -> Strategy | None:
    """The strategy a job runs with: None on one process, `asked` unless it is ``auto``.

    ``auto`` picks ``fsdp`` when the model's weights, gradients and AdamW state would take more
    than `AUTO_FSDP_FRACTION` of one rank's memory (`device_memory_bytes`), else ``ddp``.

    Args:
        asked: the job's ``strategy``: ``auto``, ``ddp`` or ``fsdp``.
        model: the model to train, as loaded.
        ranks: the job's ranks.
        device: where this rank trains.

    Returns:
        ``"ddp"``, ``"fsdp"``, or None when the job has one process.
    """
    if not ranks.distributed:
        return None
    if asked != "auto":
        return asked  # type: ignore[return-value]
    fits = training_state_bytes(model) <= AUTO_FSDP_FRACTION * device_memory_bytes(device)
    return "ddp" if fits else "fsdp"


def block_classes(model: nn.Module) -> set[str]:
    """Class names of a transformers model's repeated blocks (its ``_no_split_modules``), each an FSDP unit."""
    return set(getattr(base_of(model), "_no_split_modules", None) or ())


def parallelize(model: nn.Module, ranks: Ranks, strategy: Strategy, device: torch.device) -> nn.Module:
    """Apply `strategy` to `model` in place: `fully_shard` on each block, then on the model under any adapters.

    Args:
        model: the model to train (a peft model for LoRA), already on `device`.
        ranks: the job's ranks (at least two).
        strategy: ``ddp`` (replicate) or ``fsdp`` (shard).
        device: this rank's device.

    Returns:
        `model` itself, now an FSDP module tree.
    """
    shape, names = ((ranks.world_size, 1), ("replicate", "shard")) if strategy == "ddp" else \
        ((ranks.world_size,), ("shard",))  # fmt: skip
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    blocks = block_classes(model)
    root = base_of(model)  # peft's own generate and forward both reach the transformers model's forward
    for module in list(root.modules()):
        if module is not root and type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    # The root too is resharded after each forward (FSDP2 keeps it gathered by default): a forward
    # with no backward (reference log-probs, evaluation) must not leave gathered parameters in
    # place of the sharded ones that the optimizer and checkpoints work on.
    fully_shard(root, mesh=mesh, reshard_after_forward=True)
    return model


def is_parallel(model: nn.Module) -> bool:
    """Whether `model` (or the model under its adapters) was spread over ranks by `parallelize`."""
    return isinstance(base_of(model), FSDPModule)


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor: a sharded model's `clip_grad_norm_` returns a DTensor."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def reshard(model: nn.Module) -> None:
    """Put every block of a parallel `model` back in its sharded parameters.

    FSDP2 leaves a module's parameters unsharded after a forward that has no backward (an
    evaluation, the checkpoint's probe); the optimizer and the state-dict functions know the
    sharded ones only.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of a parallel `model`, gathered to rank 0 on the CPU (empty on other ranks).

    A collective: every rank calls it. Keys are those of ``model.state_dict()`` on one process.
    """
    reshard(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, ranks: Ranks) -> dict[str, Any]:
    """`optimizer`'s state keyed by parameter name, full, on rank 0 (empty on other ranks).

    A collective when `ranks` is distributed. The same format whatever the process count and
    strategy, so any run can load it (`load_optimizer_state`).
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if ranks.distributed else StateDictOptions()
    reshard(model)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], ranks: Ranks
) -> None:
    """Load an `optimizer_state` (written by a run of any process count) into `optimizer`; every rank calls it.

    A parameter with no saved state (it never had a gradient before the checkpoint) starts fresh,
    as it would have in the checkpointed run.
    """
    options = StateDictOptions(full_state_dict=ranks.distributed, strict=False)
    reshard(model)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
