"""The ``hf`` generation backend: the training model samples its own rollouts (`trainers.rl.rollout.generate`).

Eager decoding runs over the model's own KV cache; compiled decoding (``compile_generation``, see
`trainers.rl.generation.compiled` for when it is on by default) moves the prompts' keys and values
to a static cache and runs `trainers.rl.rollout.decode_step` compiled, the same tokens up to float
rounding. Nothing to sync, sleep or wake: the engine is the trained model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings, resolve_compute
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.generation.compiled import compiled_decode_step, should_compile, use_compile_cache
from trainers.rl.online import stop_token_ids
from trainers.rl.rollout import Rollout, generate
from trainers.rl.static_cache import StaticDecoding
from trainers.spec.config import RLHyperparameters

logger = logging.getLogger(__name__)


class HFBackend(GenerationBackend):
    """Samples from the training model itself, in eval mode (see `GenerationBackend` for the arguments)."""

    samples_training_model = True

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
        self.model = model
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.static: StaticDecoding | None = None
        self.plan(rollouts=None)

    @classmethod
    def of(cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, hp: RLHyperparameters,
           ranks: Ranks | None = None) -> HFBackend:  # fmt: skip
        """A backend for `model` as it is, on its device, in the precision `hp` resolves to (for tests and scripts)."""
        device = next(model.parameters()).device
        return cls(model, tokenizer, compute=resolve_compute(hp, device), hp=hp, ranks=ranks or Ranks(),
                   base_model="")  # fmt: skip

    def plan(self, *, rollouts: int | None) -> None:
        """Decide whether to compile the decoding step, from `compile_generation` and the run's decode steps."""
        steps = None if rollouts is None else rollouts * self.hp.max_new_tokens
        if not should_compile(self.hp.compile_generation, self.compute.device, planned_decode_steps=steps,
                              distributed=self.ranks.distributed):  # fmt: skip
            self.static = None
        elif self.static is None:  # one cache length for the run: every rollout of B rows replays one graph
            length = self.hp.max_prompt_length + self.hp.max_new_tokens
            self.static = StaticDecoding(compiled_decode_step(self.compute.device), length=length)

    def describe(self) -> str:
        """``generation backend hf, eager decoding`` or ``..., compiled decoding (static KV cache, cache dir …)``."""
        if self.static is None:
            return "generation backend hf, eager decoding"
        return f"generation backend hf, compiled decoding (static KV cache, compile cache {use_compile_cache()})"

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        row_seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Rollout:
        """`generate` in eval mode (dropout off: the sampled distribution is the one later passes score).

        With ``compile_generation`` null, a decoding step that fails to compile (an architecture
        torch.compile cannot trace whole) is logged and the run decodes eagerly from then on; the
        rollout is sampled again from the start (a function of its seeds, it comes out the same).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            try:
                return self._generate(prompt_ids, row_seeds, max_new_tokens, temperature, top_p)
            except torch._dynamo.exc.TorchDynamoException as error:
                if self.static is None or self.hp.compile_generation is not None:
                    raise
                logger.warning("the decoding step did not compile; decoding eagerly: %s", error)
                self.static = None
                return self._generate(prompt_ids, row_seeds, max_new_tokens, temperature, top_p)
        finally:
            self.model.train(was_training)

    def _generate(self, prompt_ids: Sequence[Sequence[int]], row_seeds: Sequence[int], max_new_tokens: int,
                  temperature: float, top_p: float) -> Rollout:  # fmt: skip
        return generate(
            self.model, prompt_ids, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, row_seeds=row_seeds,
            ranks=self.ranks, static=self.static,
        )  # fmt: skip
