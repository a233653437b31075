"""The rollout interface PPO and GRPO sample through (`GenerationBackend`), whatever engine does the sampling.

A backend turns prompts into a `trainers.rl.rollout.Rollout` in the layout every later pass reads
(prompts left-padded, responses right-padded from column P, EOS kept, pad after it). The trainers
never trust the engine's numbers for the losses: log π_old, log π_ref and log π are recomputed by
the training and reference models (`trainers.rl.response_logprobs`). ``Rollout.logprobs`` (the
engine's sampling log-probs) serve monitoring and truncated importance sampling (``tis_cap``) only,
except where the backend samples from the training model itself in float32
(`samples_training_model`): PPO then takes them as log π_old (`trainers.rl.online.reuses_sampling_logprobs`).

Life cycle, as the trainers drive it::

    with create_backend(policy, tokenizer, compute=..., hp=hp, ranks=..., base_model=...) as backend:
        backend.plan(rollouts=...)                  # close() at the end of the with
        for each rollout:
            with backend.awake():               # wake() … sleep(): the engine holds memory only here
                rollout = backend.sample(prompts, row_seeds=..., max_new_tokens=..., temperature=..., top_p=...)
            … rewards, updates …
            backend.sync_weights(policy)         # after each optimizer step

Every rank of a job calls each method together (the HF backend's forwards are collectives on
several ranks); each rank samples its own rows.
Shapes: B rows, P prompt tokens, A response tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings
from trainers.rl.rollout import Rollout
from trainers.spec.config import RLHyperparameters


class GenerationBackend(ABC):
    """Samples rollouts for an online-RL run; one instance per run, built after the policy is loaded.

    Args:
        model: the policy being trained, on its device, its weights as the run starts (a fresh
            run's or a checkpoint's); a peft model for LoRA.
        tokenizer: its tokenizer (pad and EOS ids; `trainers.rl.online.stop_token_ids` lists the stop ids).
        compute: the run's resolved precision, attention kernel and device.
        hp: the job's hyperparameters (``max_new_tokens``, ``temperature``, ``top_p``,
            ``max_length``, ``compile_generation``, batch sizes, ...).
        ranks: the job's processes.
        base_model: the job's ``base_model`` as it names it (a local directory, a hub id or
            ``builtin:tiny-llama``), for an engine that loads its own copy before `sync_weights`.
    """

    samples_training_model: bool = False
    """Whether `sample` runs the training model itself (its ``Rollout.logprobs`` are then the training
    model's log-probs, up to the rounding of cached attention)."""

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
        self.tokenizer, self.compute, self.hp, self.ranks, self.base_model = tokenizer, compute, hp, ranks, base_model

    @abstractmethod
    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        row_seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Rollout:
        """Sample one response per prompt.

        Args:
            prompt_ids: B prompts as token id lists (already truncated to fit; GRPO repeats each
                prompt G times, consecutively).
            row_seeds: one seed per row, its only source of randomness: the same (seed, prompt,
                weights) gives the same response, whatever rows are sampled beside it.
            max_new_tokens: most tokens per response, EOS included.
            temperature: τ > 0; ``Rollout.logprobs`` are ``log softmax(logits / τ)`` of the sampled
                tokens (before top-p) and ``Rollout.temperature`` is τ.
            top_p: nucleus threshold in (0, 1].

        Returns:
            The rollout on the policy's device: ``prompt_ids``/``prompt_mask`` (B, P) left-padded
            with the pad id; ``response_ids``/``response_mask`` (B, A) right-padded with the pad id,
            a response ending at its first stop token (kept, masked 1), A the longest response;
            ``logprobs`` (B, A) float32, 0 on padding; ``ended_with_eos`` (B,) bool;
            ``response_lengths`` (B,) long.
        """

    def plan(self, *, rollouts: int) -> None:  # noqa: B027 (a hint; engines without a start-up trade-off ignore it)
        """Hear how many rollouts the run will sample, before the first: an engine may trade a start-up cost
        (a compile) against it."""

    def describe(self) -> str:
        """One line for the run's events: the engine and how it samples."""
        return f"generation backend {self.hp.generation_backend}"

    def sync_weights(self, model: nn.Module) -> None:  # noqa: B027 (a no-op unless the engine holds a copy)
        """Give the engine the policy's current weights; called after each optimizer step.

        A backend that samples from `model` itself does nothing; one with a copy may defer the
        copy to its next `wake` or `sample`.
        """

    def sleep(self) -> None:  # noqa: B027
        """Free the engine's memory (weights, KV cache) between rollouts; idempotent."""

    def wake(self) -> None:  # noqa: B027
        """Restore what `sleep` freed, before sampling; idempotent."""

    def close(self) -> None:  # noqa: B027
        """Release the engine for good, at the run's end (also on errors and stops)."""

    @contextmanager
    def awake(self) -> Iterator[GenerationBackend]:
        """`wake` on entry, `sleep` on exit: the span of a rollout's sampling."""
        self.wake()
        try:
            yield self
        finally:
            self.sleep()

    def __enter__(self) -> GenerationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
