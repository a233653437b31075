"""Rollout engines behind one interface (`trainers.rl.generation.base.GenerationBackend`).

``generation_backend`` picks one (`create_backend`):

- ``hf`` (`trainers.rl.generation.hf.HFBackend`): samples from the training model itself with
  `trainers.rl.rollout.generate`, over a static KV cache with a compiled decoding step where it
  pays off (``compile_generation``); nothing to sync, sleep or wake.
- ``vllm`` (`trainers.rl.generation.vllm.VLLMBackend`, the optional ``vllm`` extra): a vLLM
  engine beside the trainer, given the policy's weights after each optimizer step, its memory freed
  between rollouts.
"""

from __future__ import annotations

import importlib.util

from torch import nn
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings
from trainers.rl.generation.base import GenerationBackend
from trainers.spec.config import RLHyperparameters
from trainers.spec.errors import UserError

__all__ = ["GenerationBackend", "create_backend"]

BACKEND_PARAM = "hyperparameters.generation_backend"
VLLM_MISSING = "generation_backend 'vllm' needs the optional vllm extra (pip install -e '.[vllm]')"


def create_backend(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    compute: ComputeSettings,
    hp: RLHyperparameters,
    ranks: Ranks,
    base_model: str,
) -> GenerationBackend:
    """The rollout engine `hp.generation_backend` names, built for the run (see `GenerationBackend`'s arguments).

    Raises:
        UserError: ``vllm`` without the vllm package installed.
    """
    kind = hp.generation_backend
    if kind == "hf":
        from trainers.rl.generation.hf import HFBackend

        backend_class: type[GenerationBackend] = HFBackend
    elif kind == "vllm":
        try:
            import vllm  # noqa: F401 (heavy: imported only when asked for)
        except ImportError as error:
            raise UserError(VLLM_MISSING, param=BACKEND_PARAM) from error
        if importlib.util.find_spec("trainers.rl.generation.vllm") is None:  # a build without the module
            raise UserError(VLLM_MISSING, param=BACKEND_PARAM)
        from trainers.rl.generation.vllm import VLLMBackend

        backend_class = VLLMBackend
    else:
        raise ValueError(f"unknown generation backend {kind!r}")
    return backend_class(model, tokenizer, compute=compute, hp=hp, ranks=ranks, base_model=base_model)
