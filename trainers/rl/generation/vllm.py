"""The ``vllm`` generation backend: a vLLM engine inside each training process (the optional ``vllm`` extra).

- **Colocated.** Every rank builds its own `vllm.LLM` with the ``external_launcher`` executor, as
  TRL's and verl's colocate modes do: the engine runs in the training process, on its GPU, and
  joins the job's torchrun process group. With N processes the engines form one tensor-parallel
  group of N (each holds 1/N of the weights): every rank submits the same requests (the ranks'
  rows, gathered) and vLLM's deterministic scheduling gives every rank the same completions, of
  which each keeps its own rows.
- **Loaded once, then updated in place.** At the start the policy's weights (for LoRA: the base
  model's) are saved to a temporary directory that the engine loads; after that, `sync_weights`
  marks the engine stale and the next `wake`/`sample` streams the policy's current weights into
  it (``reload_weights`` where the installed vLLM has it, else the model's ``load_weights``) and
  resets the prefix cache, so several optimizer steps between two rollouts cost one copy.
  For LoRA the base weights never change: each sync saves the adapter to a new directory and
  samples with a `vllm.lora.request.LoRARequest` of a new id.
- **Memory.** Between rollouts `sleep` puts the engine to sleep at level 1 (weights offloaded
  to host memory, KV cache discarded) so the update has the GPU; `wake` restores the weights,
  pushes pending ones, then re-creates the KV cache. Where vLLM has no sleep mode (the CPU) both
  are no-ops. ``vllm_gpu_memory_utilization`` bounds what the engine takes while awake.
- **Sampling.** One request per row with the row's seed (``SamplingParams(seed=..., n=1)``): a
  row's tokens depend on its seed, its prompt and the weights, not on its neighbours (up to the
  engine's batch-dependent float rounding). GRPO's repeated prompts are prefilled once by vLLM's
  prefix cache. Tokens only: no text is decoded.
- **Log-probs** come from vLLM's ``processed_logprobs``: ``log softmax(logits / τ)`` of the sampled
  token, the interface's value when ``top_p`` is 1; with ``top_p < 1`` vLLM renormalises over the
  nucleus first (the distribution it actually sampled). The losses never read them (see
  `trainers.rl.generation.base`).

Shapes: B rows, P prompt tokens, A response tokens.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.online import stop_token_ids
from trainers.rl.rollout import Rollout, left_pad
from trainers.spec.config import RLHyperparameters

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VLLMBackend(GenerationBackend):
    """A colocated vLLM engine given the policy's weights after each optimizer step (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        compute: ComputeSettings,
        hp: RLHyperparameters,
        ranks: Ranks,
        base_model: str,
    ) -> None:
        super().__init__(model, tokenizer, compute=compute, hp=hp, ranks=ranks, base_model=base_model)
        import vllm
        from vllm.platforms import current_platform

        self.stop_ids = stop_token_ids(model, tokenizer)
        self.lora = isinstance(model, PeftModel)
        self.sleeps = current_platform.is_sleep_mode_available()  # CUDA/ROCm: vLLM refuses sleep mode elsewhere
        self.memory = hp.vllm_gpu_memory_utilization
        self.version = vllm.__version__
        self.asleep = False
        self.stale: nn.Module | None = None  # the model to push at the next wake/sample
        self.adapter: Any = None  # the LoRARequest sampling uses (LoRA only)
        self.adapters = 0
        self.owns_process_group = not torch.distributed.is_initialized()
        self.dir = self._shared_temp_dir()
        with _without_autocast():
            self._save_policy(model)
            self.llm = self._start_engine(model)
            if self.lora:
                self.adapter = self._save_adapter(model)
        self.sleep()

    def _shared_temp_dir(self) -> Path:
        """Rank 0's new temporary directory, created on every node (its local rank 0 writes there)."""
        path = Path(self.ranks.broadcast(tempfile.mkdtemp(prefix="rlhf-vllm-") if self.ranks.is_main else ""))
        if self.ranks.local_rank == 0:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _save_policy(self, model: nn.Module) -> None:
        """Write the weights the engine starts from (LoRA: the base model's) and the tokenizer, in the compute dtype."""
        base = model.get_base_model() if self.lora else model
        dtype = self.compute.compute_dtype
        weights = {name: tensor.to(device="cpu", dtype=dtype) for name, tensor in _base_weights(model)}  # on the host
        if self.ranks.local_rank == 0:
            base.save_pretrained(self.dir / "policy", state_dict=weights)
            self.tokenizer.save_pretrained(self.dir / "policy")
        del weights
        self.ranks.barrier()

    def _start_engine(self, model: nn.Module) -> Any:
        """The `vllm.LLM`, in this process, tensor-parallel over the job's processes."""
        from vllm import LLM

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the external launcher's engine lives in this process
        lora: dict[str, Any] = {}
        if self.lora:
            rank = model.peft_config[model.active_adapter].r
            lora = {"enable_lora": True, "max_loras": 1, "max_lora_rank": min(r for r in LORA_RANKS if r >= rank)}
        with _torchrun_environment(), _own_rng():
            return LLM(
                model=str(self.dir / "policy"),
                dtype=self.compute.compute_dtype,
                tensor_parallel_size=self.ranks.world_size,
                distributed_executor_backend="external_launcher",
                gpu_memory_utilization=self.memory,
                max_model_len=self.hp.max_length,
                enable_sleep_mode=self.sleeps,
                seed=0,  # the same on every rank of the tensor-parallel group; rows bring their own seeds
                logprobs_mode="processed_logprobs",  # after temperature (raw_logprobs would be at τ = 1)
                **lora,
            )

    def describe(self) -> str:
        """``generation backend vllm 0.x (tensor parallel N, dtype, memory share, sleep mode, LoRA)``."""
        sleep = "sleep mode" if self.sleeps else "no sleep mode on this platform"
        lora = ", LoRA adapters" if self.lora else ""
        return (f"generation backend vllm {self.version} (colocated, tensor parallel {self.ranks.world_size}, "
                f"{str(self.compute.compute_dtype).removeprefix('torch.')}, gpu_memory_utilization {self.memory}, "
                f"{sleep}{lora})")  # fmt: skip

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        row_seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Rollout:
        """Sample every rank's rows on every rank's engine, keep this rank's (see `GenerationBackend.sample`)."""
        from vllm import SamplingParams

        if len(prompt_ids) != len(row_seeds):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(row_seeds)} row seeds")
        self.wake()  # no-op inside `awake()`; pushes weights synced since the last rollout
        shares = self.ranks.gather(([list(p) for p in prompt_ids], list(row_seeds)))
        first = sum(len(prompts) for prompts, _ in shares[: self.ranks.rank])
        requests = [{"prompt_token_ids": p} for prompts, _ in shares for p in prompts]
        params = [
            SamplingParams(n=1, seed=seed, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                           logprobs=0, stop_token_ids=self.stop_ids, detokenize=False)  # fmt: skip
            for _, seeds in shares
            for seed in seeds
        ]
        with _without_autocast():
            outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.adapter)
        mine = [out.outputs[0] for out in outputs[first : first + len(prompt_ids)]]
        responses = [list(c.token_ids) for c in mine]
        logprobs = [[step[token].logprob for step, token in zip(c.logprobs, c.token_ids, strict=True)] for c in mine]
        return rollout_from_completions(prompt_ids, responses, logprobs, pad_token_id=self.tokenizer.pad_token_id,
                                        stop_ids=self.stop_ids, temperature=temperature,
                                        device=self.compute.device)  # fmt: skip

    def sync_weights(self, model: nn.Module) -> None:
        """Mark the engine stale: the next `wake` or `sample` pushes `model`'s weights as they are then."""
        self.stale = model

    def _push(self) -> None:
        """Push the stale model's weights (LoRA: a new adapter) into the engine and drop cached prefixes."""
        model, self.stale = self.stale, None
        if model is None:
            return
        with _without_autocast():
            if self.lora:
                self.adapter = self._save_adapter(model)
            else:
                self.llm.collective_rpc(_load_weights, args=(_base_weights(model),))
        self.llm.reset_prefix_cache()

    def _save_adapter(self, model: PeftModel) -> Any:
        """Save the current adapter to a new directory (the previous one removed) and return its request."""
        from vllm.lora.request import LoRARequest

        self.adapters += 1
        path = self.dir / f"adapter-{self.adapters}"
        state = {name: _full(param) for name, param in model.named_parameters() if "lora_" in name}
        if self.ranks.local_rank == 0:
            model.save_pretrained(path, state_dict=state)
            shutil.rmtree(self.dir / f"adapter-{self.adapters - 1}", ignore_errors=True)
        self.ranks.barrier()
        return LoRARequest(f"policy-{self.adapters}", self.adapters, str(path))

    def sleep(self) -> None:
        """Offload the weights to host memory and drop the KV cache (level 1), where vLLM has sleep mode."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
        self.asleep = True

    def wake(self) -> None:
        """Bring the weights back, push pending ones, then re-create the KV cache."""
        if not self.asleep:
            self._push()
            return
        if self.sleeps:
            self.llm.wake_up(tags=["weights"])
        self._push()
        if self.sleeps:
            self.llm.wake_up(tags=["kv_cache"])
        self.asleep = False

    def close(self) -> None:
        """Shut the engine down, drop vLLM's process groups (the job's own too where vLLM created it), remove files."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        with contextlib.suppress(Exception), _default_group_kept(not self.owns_process_group):
            llm.llm_engine.engine_core.shutdown()  # an engine that failed mid-step still releases what it can
        del llm
        destroy_model_parallel()
        if self.owns_process_group:
            destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.ranks.local_rank == 0:
            shutil.rmtree(self.dir, ignore_errors=True)


def rollout_from_completions(
    prompt_ids: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]],
    *,
    pad_token_id: int,
    stop_ids: Sequence[int],
    temperature: float,
    device: torch.device,
) -> Rollout:
    """An engine's completions in the `Rollout` layout: prompts left-padded, responses right-padded, stop token kept.

    A response is cut after its first stop token (an engine stops there; the cut guards the layout).

    Args:
        prompt_ids: B prompts.
        responses: B sampled token lists, each possibly ending with a stop token.
        logprobs: B lists, the log-prob of each sampled token.
        pad_token_id: fills the padding.
        stop_ids: the ids that end a response.
        temperature: τ the responses were sampled at.
        device: where the rollout goes.

    Returns:
        The rollout, A the longest response (at least 1).
    """
    stops = set(stop_ids)
    cut = [next((i + 1 for i, token in enumerate(r) if token in stops), len(r)) for r in responses]
    width = max([*cut, 1])
    B = len(responses)
    response_ids = torch.full((B, width), pad_token_id, dtype=torch.long)  # (B, A)
    response_mask = torch.zeros((B, width), dtype=torch.long)  # (B, A)
    sampled = torch.zeros((B, width), dtype=torch.float32)  # (B, A)
    for row, (tokens, values, length) in enumerate(zip(responses, logprobs, cut, strict=True)):
        response_ids[row, :length] = torch.tensor(tokens[:length], dtype=torch.long)
        response_mask[row, :length] = 1
        sampled[row, :length] = torch.tensor(values[:length], dtype=torch.float32)
    prompt, prompt_mask = left_pad(prompt_ids, pad_token_id)  # (B, P)
    ended = [length > 0 and r[length - 1] in stops for r, length in zip(responses, cut, strict=True)]
    return Rollout(
        prompt_ids=prompt.to(device),
        prompt_mask=prompt_mask.to(device),
        response_ids=response_ids.to(device),
        response_mask=response_mask.to(device),
        logprobs=sampled.to(device),
        ended_with_eos=torch.tensor(ended, dtype=torch.bool, device=device),
        response_lengths=torch.tensor(cut, dtype=torch.long, device=device),
        temperature=temperature,
    )


def _full(tensor: Tensor) -> Tensor:
    """A parameter's whole value, detached: an FSDP2 shard (DTensor) is gathered (a collective)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _base_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The weights under their checkpoint names; for a peft model the base model's (adapters left out).

    Lazy, in parameter order: every rank gathers the same shards in the same order.
    """
    if isinstance(model, PeftModel):
        for name, param in model.get_base_model().named_parameters():
            if "lora_" not in name:
                yield name.replace(".base_layer", ""), _full(param)
    else:
        for name, param in model.named_parameters():
            yield name, _full(param)


def _load_weights(worker: Any, weights: Iterator[tuple[str, Tensor]]) -> None:
    """Run on the engine's worker (in this process): load checkpoint-format weights in place."""
    reload = getattr(worker.model_runner, "reload_weights", None)
    if reload is not None and "weights_iterator" in inspect.signature(reload).parameters:
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)  # re-runs post-load processing
    else:  # vLLM before in-place reloading
        worker.model_runner.model.load_weights(weights)


@contextlib.contextmanager
def _torchrun_environment() -> Iterator[None]:
    """torchrun's variables, which the external launcher reads, set for one process where torchrun did not run."""
    missing = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    missing = {key: value for key, value in missing.items() if key not in os.environ}
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            missing["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ.update(missing)
    try:
        yield
    finally:
        for key in missing:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _default_group_kept(keep: bool) -> Iterator[None]:
    """With `keep`, calls that would destroy the default process group leave it alone.

    vLLM's engine shutdown tears down "its" distributed environment, the default process group
    included (``cleanup_dist_env_and_memory``). Under torchrun that group is the job's: the trainer
    and the worker go on using it after the engine closes (the last checkpoint, the rank's exit).
    vLLM's own groups are still destroyed.
    """
    if not keep:
        yield
        return
    destroy = torch.distributed.destroy_process_group

    def destroy_but_the_default(group: Any = None) -> None:
        if group is not None and group is not torch.distributed.GroupMember.WORLD:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_but_the_default
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """Restore the process's global generators afterwards: an in-process engine seeds them at start-up."""
    import numpy as np

    python, numpy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


def _without_autocast() -> contextlib.AbstractContextManager[None]:
    """The trainers sample inside the job's autocast; the engine computes in its own dtype."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, enabled=False)
