"""The ``hf`` generation backend: the training model samples its own rollouts (`trainers.rl.rollout.generate`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.rollout import Rollout, generate
from trainers.spec.config import RLHyperparameters


class HFBackend(GenerationBackend):
    """Samples from the training model itself, in eval mode: nothing to sync, sleep or wake."""

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
        from trainers.rl.online import stop_token_ids  # online imports this package

        self.model = model
        self.stop_ids = stop_token_ids(model, tokenizer)

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        row_seeds: Sequence[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Rollout:
        """`generate` in eval mode (dropout off: the sampled distribution is the one later passes score)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return generate(
                self.model, prompt_ids, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids,
                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, row_seeds=row_seeds,
                ranks=self.ranks,
            )  # fmt: skip
        finally:
            self.model.train(was_training)
