"""Checkpoints: a Hugging Face model directory plus the trainer state that resuming needs.

Layout written by `save_checkpoint(directory, ...)`:
    directory/model/                    save_pretrained of model and tokenizer (safetensors, config,
                                        tokenizer files); for LoRA, peft's adapter_config.json and
                                        adapter_model.safetensors instead of the full weights
    directory/model/rlhf_service.json   what the model is (`model_info`): kind, adapter, base model, ...
    directory/trainer_state.pt          optimizer, scheduler, step, RNG states, data position, job spec
    directory/master_weights.pt         the fp32 weights a resumed run continues from, when model/ holds
                                        them rounded to a lower-precision base type (full models only)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.spec.callbacks import Callbacks
from trainers.spec.errors import UserError

MODEL_DIR = "model"
STATE_FILE = "trainer_state.pt"
MASTER_WEIGHTS_FILE = "master_weights.pt"
MODEL_INFO_FILE = "rlhf_service.json"
STATE_VERSION = 2  # 2: the optimizer state is keyed by parameter name; 1: by position (still read)
READABLE_VERSIONS = (1, 2)

PROBE_TEXT = "rlhf-service checkpoint probe"
PROBE_VOCAB = 32  # logits of the first PROBE_VOCAB vocabulary entries are reported


def save_checkpoint(
    directory: str | Path,
    *,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    data_position: dict[str, int],
    job: dict[str, Any],
    model_info: dict[str, Any],
    dtype: torch.dtype | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model, tokenizer, model info and trainer state into `directory` (created if missing).

    Args:
        directory: where to write; `model/` and `trainer_state.pt` are created inside.
        model: the model being trained; a peft model writes only its adapter, whose config then
            names ``model_info["base_model"]`` as its base.
        tokenizer: its tokenizer.
        optimizer_state: the optimizer's state, keyed by parameter name
            (`trainers.distributed.sharding.optimizer_state`), whose moments resuming needs.
        scheduler: the learning-rate schedule.
        step: optimizer steps done.
        data_position: where in the data order training stands (e.g. ``{"steps_done": step}``).
        job: the job spec as a plain dict, to detect a resume with a different spec.
        model_info: what the model is, written to ``model/rlhf_service.json`` (see `offer_checkpoint`).
        dtype: the type a full model's floating-point weights are written in (the base model's:
            fp32 master weights of a bf16 base are written as bf16); None keeps the model's own.
            An adapter is written as trained.
        weights: the model's full state dict, when the model itself does not hold it (gathered
            from the ranks of a sharded run); None writes the model's own.
    """
    directory = Path(directory)
    model_dir = directory / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        # The adapter names the reference it was trained on, so peft and `load_policy` find the
        # base. Embeddings are never saved with it: loading the base reproduces them, pad row and
        # all, and peft's "auto" check would otherwise ask the hub about the base's config.
        for adapter_config in model.peft_config.values():
            adapter_config.base_model_name_or_path = model_info["base_model"]
        model.save_pretrained(model_dir, safe_serialization=True, save_embedding_layers=False, state_dict=weights)
    else:
        save_in_dtype(model, model_dir, dtype, weights)
        if dtype is not None and dtype != torch.float32:  # model/ is rounded: keep what training continues from
            full = model.state_dict() if weights is None else weights
            master = {name: t for name, t in full.items() if t.dtype == torch.float32}
            torch.save(master, directory / MASTER_WEIGHTS_FILE)
    tokenizer.save_pretrained(model_dir)
    write_model_info(model_dir, model_info)
    state = {
        "version": STATE_VERSION,
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "data_position": data_position,
        "job": job,
    }
    torch.save(state, directory / STATE_FILE)


def save_in_dtype(
    model: PreTrainedModel, directory: Path, dtype: torch.dtype | None, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """``save_pretrained`` with the floating-point weights cast to `dtype` and the config saying so.

    Args:
        model: a full model (left unchanged).
        directory: where to write.
        dtype: the type on disk; None, or the model's own, writes the model as it is.
        weights: the model's full state dict when the model does not hold it (a sharded run's);
            None: the model's own.
    """
    if dtype is None or dtype == model.dtype:
        model.save_pretrained(directory, safe_serialization=True, state_dict=weights)
        return
    weights = model.state_dict() if weights is None else weights
    weights = {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}
    model.save_pretrained(directory, safe_serialization=True, state_dict=weights)
    config = Path(directory) / "config.json"  # save_pretrained records the in-memory type; the file holds `dtype`
    config.write_text(json.dumps(json.loads(config.read_text()) | {"dtype": str(dtype).removeprefix("torch.")},
                                 indent=2, sort_keys=True) + "\n")  # fmt: skip


def offer_checkpoint(
    callbacks: Callbacks,
    step: int,
    *,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    metrics: dict[str, float],
    data_position: dict[str, int],
    job: dict[str, Any],
    model_info: dict[str, Any],
    dtype: torch.dtype | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Hand a checkpoint of the current state to `callbacks.on_checkpoint`.

    The `save` function given to the callback writes the state as it is during the call; call
    it before returning.

    Args:
        callbacks: receives ``(step, save, info)``.
        step: optimizer steps done.
        model: the model being trained (a peft model for LoRA).
        tokenizer: its tokenizer.
        optimizer_state: the optimizer's state, keyed by parameter name.
        scheduler: the learning-rate schedule.
        metrics: the latest metrics, passed on in ``info["metrics"]``.
        data_position: where in the data order training stands.
        job: the job spec as a plain dict.
        model_info: what the checkpoint's model is, passed on in ``info["model"]`` and written as
            ``model/rlhf_service.json`` so a downloaded checkpoint describes itself. JSON-ready;
            at least ``{"kind": "causal_lm" | "reward_model", "adapter": bool, "base_model": str}``
            (reward models add ``reward_mean`` and ``reward_std``).
        dtype: the type of the model's weights on disk (`save_checkpoint`).
        weights: the model's full state dict when it does not hold it (`save_checkpoint`).

    On a sharded run every rank calls this (the probe is a forward pass of the model); only the
    callbacks of rank 0 save (`trainers.distributed.callbacks.RankCallbacks`).
    """

    def save(directory: Path) -> None:
        save_checkpoint(
            directory,
            model=model,
            tokenizer=tokenizer,
            optimizer_state=optimizer_state,
            scheduler=scheduler,
            step=step,
            data_position=data_position,
            job=job,
            model_info=model_info,
            dtype=dtype,
            weights=weights,
        )

    info = {
        "metrics": dict(metrics),
        "probe": {"text": PROBE_TEXT, "logits": probe_logits(model, tokenizer)},
        "model": dict(model_info),
    }
    callbacks.on_checkpoint(step, save, info)


def write_model_info(model_dir: str | Path, model_info: dict[str, Any]) -> None:
    """Write `model_info` as ``model_dir/rlhf_service.json``.

    Args:
        model_dir: a ``save_pretrained`` directory.
        model_info: JSON-ready description of the model (see `offer_checkpoint`).
    """
    (Path(model_dir) / MODEL_INFO_FILE).write_text(json.dumps(model_info, indent=2) + "\n", encoding="utf-8")


def read_model_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``rlhf_service.json`` of a model directory, or None where there is none.

    Args:
        model_dir: a ``save_pretrained`` directory.

    Returns:
        The model info written by `write_model_info`, or None for a directory from elsewhere.
    """
    path = Path(model_dir) / MODEL_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    """Read `trainer_state.pt` of a checkpoint directory (tensors loaded on the CPU).

    Args:
        directory: a directory written by `save_checkpoint`.

    Returns:
        The state dict with keys ``version, step, optimizer, scheduler, rng, data_position, job``.

    Raises:
        UserError: the directory is not a complete checkpoint.
    """
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file() or not (directory / MODEL_DIR).is_dir():
        raise UserError(f"{directory} is not a checkpoint: expected {MODEL_DIR}/ and {STATE_FILE}", param="resume_from")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") not in READABLE_VERSIONS:
        raise UserError(f"{path} has unsupported version {state.get('version')!r}", param="resume_from")
    return state


def restore_master_weights(model: nn.Module, directory: str | Path) -> bool:
    """Load a checkpoint's fp32 master weights (`MASTER_WEIGHTS_FILE`) into a full model, when it has them.

    A checkpoint of a bf16 or fp16 base holds its model rounded to that type, for downloads; a
    resumed run continues from the unrounded weights instead, as if it had never stopped.

    Args:
        model: the model loaded from the checkpoint (a full model; adapters are saved as trained).
        directory: the checkpoint directory.

    Returns:
        Whether master weights were loaded.

    Raises:
        UserError: the file holds weights the model does not have.
    """
    path = Path(directory) / MASTER_WEIGHTS_FILE
    if not path.is_file():
        return False
    master = torch.load(path, map_location="cpu", weights_only=True)
    unexpected = model.load_state_dict(master, strict=False).unexpected_keys
    if unexpected:
        raise UserError(f"{path} holds weights this model does not have: {unexpected[:3]}", param="resume_from")
    return True


def capture_rng() -> dict[str, Any]:
    """The Python and torch (CPU and CUDA) RNG states."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Restore the RNG states captured by `capture_rng`."""
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


@torch.no_grad()
def probe_logits(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[float]:
    """The model's logits on the tokenised `PROBE_TEXT`: a fingerprint of its weights.

    A causal LM reports the last position's logits, first `PROBE_VOCAB` entries; a
    sequence-classification model (logits of shape (1, num_labels)) reports
    ``logits[0, :PROBE_VOCAB]``. Computed in eval mode (no dropout), so a reloaded checkpoint
    reproduces them.

    Args:
        model: a causal LM or a sequence-classification model, possibly wrapped by peft.
        tokenizer: its tokenizer.

    Returns:
        At most `PROBE_VOCAB` float32 logits as Python floats.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"].to(device)  # (1, T)
    logits = model(input_ids=input_ids, use_cache=False).logits  # (1, T, V) or (1, num_labels)
    model.train(was_training)
    last = logits[0, -1] if logits.dim() == 3 else logits[0]  # (V,) or (num_labels,)
    return last[:PROBE_VOCAB].float().cpu().tolist()


class AlsoSaving:
    """The run's callbacks, except that the `save` of a checkpoint offer also writes the trainer's extras.

    `offer_checkpoint` knows the model and trainer state only; this keeps the auxiliary model and
    extra state in the same checkpoint directory, written by the same call of `save`.
    """

    def __init__(self, callbacks: Callbacks, save_extra: Callable[[Path], None]):
        self._callbacks = callbacks
        self._save_extra = save_extra

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict[str, Any]) -> None:
        def save_all(directory: Path) -> None:
            save(directory)
            self._save_extra(Path(directory))

        self._callbacks.on_checkpoint(step, save_all, info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._callbacks, name)  # every other hook goes to the run's callbacks
