"""The rewards of PPO and GRPO: reward-model scores and graders, one number per completion (DESIGN §7).

`RewardComputer.from_job` loads what a job's reward spec names, once: each reward-model checkpoint
(frozen, eval mode, on the training device) with the reward statistics its job recorded, and the
server's registry of reward functions. `RewardComputer.score` then rates a rollout's completions:

1. each reward model scores prompt + completion, tokenised with its own tokenizer exactly as its
   training rendered a prompt and a chosen response (`tokenize_pairs`: the prompt as text or chat
   template, the completion, EOS), read at the last token; then normalised and clipped as the spec
   asks (`normalize_model_score`);
2. the spec's graders rate the completion text (decoded without special tokens) against the prompt
   row, and combine with the model scores (`evaluate_batch`);
3. a completion cut at the length limit loses `missing_eos_penalty`.

A grader that cannot grade a completion scores 0 for it; the rollout's errors are summarised in a
warning event (the first `MAX_ERROR_EVENTS` rollouts that have any) and counted in the result, never
raised, so one bad row cannot stop a run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.checkpoint import read_model_info
from trainers.config import GRPOJob, PPOJob
from trainers.errors import UserError
from trainers.graders import evaluate_batch, normalize_model_score
from trainers.kl import apply_missing_eos_penalty
from trainers.preference_data import collate_pairs, tokenize_pairs
from trainers.reward_functions import RewardFunction, load_registry
from trainers.reward_model import load_reward_model, rewards
from trainers.rewards_spec import ModelReward, RewardSpec, leaf_graders, validate_reward_spec
from trainers.rollout import Rollout

MAX_ERROR_EVENTS = 10  # rollouts whose grader errors are reported as events; later ones are only counted
ERROR_EXAMPLES = 3  # messages quoted in each event
DEFAULT_MAX_LENGTH = 2048  # a reward model whose config states no context length


@dataclass
class RewardModel:
    """A frozen reward-model checkpoint and the statistics that normalise its scores."""

    checkpoint_id: str
    model: nn.Module  # eval mode, no gradients, on the training device
    tokenizer: PreTrainedTokenizerBase
    spec: ModelReward  # how its scores are normalised and clipped
    mean: float | None  # reward mean recorded by its job (None when the directory has none)
    std: float | None
    max_length: int  # most tokens of prompt + completion it reads


@dataclass
class RewardScores:
    """What `RewardComputer.score` returns for B completions.

    Attributes:
        rewards: (B,) float32 on the rollout's device: the reward each completion earned, missing-EOS
            penalty included; what PPO and GRPO optimise.
        per_grader: grader name → (B,) float32 (CPU), each grader's own score before weights
            (``reward/<name>`` metrics).
        errors: ``"completion <i>: <grader>: <why>"`` for every grader that could not grade a completion.
        rows_with_errors: how many completions had at least one such error.
    """

    rewards: Tensor
    per_grader: dict[str, Tensor]
    errors: list[str]
    rows_with_errors: int


class RewardComputer:
    """Scores completions under a job's reward spec; shared by PPO and GRPO.

    Args:
        spec: the job's validated reward spec.
        registry: reward functions by name (`load_registry`).
        reward_models: checkpoint id → loaded reward model, one for each checkpoint `spec` names.
        missing_eos_penalty: subtracted from the reward of a completion without EOS (None: nothing).
        on_event: receives the warning summaries, ``(level, message)``.
        batch_size: completions per reward-model forward.
    """

    def __init__(
        self,
        spec: RewardSpec,
        *,
        registry: Mapping[str, RewardFunction],
        reward_models: Mapping[str, RewardModel],
        missing_eos_penalty: float | None,
        on_event: Callable[[str, str], None],
        batch_size: int = 16,
    ):
        self.spec = spec
        self.registry = registry
        self.reward_models = dict(reward_models)
        self.missing_eos_penalty = missing_eos_penalty
        self.on_event = on_event
        self.batch_size = batch_size
        self.grader_names = [g.name for g in leaf_graders(spec)]
        self._error_events = 0

    @classmethod
    def from_job(
        cls,
        job: GRPOJob | PPOJob,
        *,
        device: torch.device,
        on_event: Callable[[str, str], None],
        batch_size: int = 16,
    ) -> RewardComputer:
        """Load everything the job's reward needs: its reward models and the function registry.

        Args:
            job: a PPO or GRPO job; its `reward_model_dirs` must hold a directory for every
                checkpoint the reward names, and its `reward_function_modules` the server's modules.
            device: where the reward models run (the policy's device).
            on_event: receives info and warning events.
            batch_size: completions per reward-model forward.

        Returns:
            A computer ready to score rollouts.

        Raises:
            UserError: a function grader names a function the server does not offer, a checkpoint
                has no directory or is not a reward model (ModelNotFoundError: it cannot be loaded).
            RewardRegistryError: the server's reward-function modules cannot be loaded.
        """
        registry = load_registry(job.reward_function_modules)
        problems = validate_reward_spec(job.reward, registry=registry)
        if problems:
            path, message = problems[0]
            raise UserError(f"{path}: {message}", param=path)
        models = {}
        for grader in leaf_graders(job.reward):
            if isinstance(grader, ModelReward):
                models[grader.checkpoint_id] = _load(grader, job.reward_model_dirs, device, on_event)
        return cls(
            job.reward, registry=registry, reward_models=models, on_event=on_event, batch_size=batch_size,
            missing_eos_penalty=job.hyperparameters.missing_eos_penalty,
        )  # fmt: skip

    @torch.no_grad()
    def score(self, items: Sequence[Mapping[str, Any]], completions: Sequence[str], rollout: Rollout) -> RewardScores:
        """Rewards of B completions, each answering its own prompt row.

        Args:
            items: B prompt rows (``{"prompt": ..., **extra}``); GRPO repeats a row G times.
            completions: B completion texts, decoded without special tokens (`decode_completions`).
            rollout: the rollout they were sampled in (B rows): supplies ``ended_with_eos`` and the device.

        Returns:
            The rewards, each grader's scores and the grader errors.
        """
        model_scores = {cid: self._model_scores(rm, items, completions) for cid, rm in self.reward_models.items()}
        results = evaluate_batch(self.spec, completions, items, self.registry, model_scores)
        device = rollout.response_ids.device
        reward = torch.tensor([r.reward for r in results], dtype=torch.float32, device=device)  # (B,)
        if self.missing_eos_penalty:
            reward = apply_missing_eos_penalty(reward, rollout.ended_with_eos, self.missing_eos_penalty)
        per_grader = {
            name: torch.tensor([r.per_grader[name] for r in results], dtype=torch.float32)  # (B,)
            for name in self.grader_names
        }
        errors = [f"completion {i}: {e}" for i, r in enumerate(results) for e in r.errors]
        rows_with_errors = sum(bool(r.errors) for r in results)
        if errors:
            self._report(errors, rows_with_errors, len(results))
        return RewardScores(rewards=reward, per_grader=per_grader, errors=errors, rows_with_errors=rows_with_errors)

    def _model_scores(
        self, rm: RewardModel, items: Sequence[Mapping[str, Any]], completions: Sequence[str]
    ) -> list[float]:
        """Normalised, clipped scores of one reward model: prompt + completion rendered as in its training."""
        pairs_of = zip(items, completions, strict=True)
        rows = [{"prompt": item["prompt"], "chosen": c, "rejected": c} for item, c in pairs_of]  # one pair each
        pairs = tokenize_pairs(
            rows, rm.tokenizer, max_length=rm.max_length, max_prompt_length=rm.max_length - 1, split="reward"
        )
        device = next(rm.model.parameters()).device
        raw: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            batch = collate_pairs(chunk, rm.tokenizer.pad_token_id).to(device)  # 2b rows, chosen first
            b = len(chunk)
            raw += rewards(rm.model, batch.input_ids[:b], batch.attention_mask[:b]).tolist()  # (b,)
        return [normalize_model_score(s, rm.spec, mean=rm.mean, std=rm.std) for s in raw]

    def _report(self, errors: list[str], rows_with_errors: int, total: int) -> None:
        self._error_events += 1
        if self._error_events > MAX_ERROR_EVENTS:
            return
        examples = "; ".join(errors[:ERROR_EXAMPLES])
        last = " (the last such event: later errors are only counted)" if self._error_events == MAX_ERROR_EVENTS else ""
        self.on_event(
            "warning",
            f"{rows_with_errors} of {total} completions could not be fully graded ({len(errors)} grader errors; "
            f"each such grader scored 0), e.g. {examples}{last}",
        )


def decode_completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """The completions of a rollout as text, without special tokens (EOS, padding, chat markers).

    Args:
        tokenizer: the policy's tokenizer.
        rollout: B sampled responses.

    Returns:
        B strings, what graders read as ``{{sample.output_text}}``.
    """
    return tokenizer.batch_decode(rollout.response_ids.tolist(), skip_special_tokens=True)


def _load(
    spec: ModelReward, model_dirs: Mapping[str, str], device: torch.device, on_event: Callable[[str, str], None]
) -> RewardModel:
    """Load one reward-model checkpoint, frozen, with its reward statistics."""
    checkpoint_id = spec.checkpoint_id
    if checkpoint_id not in model_dirs:
        raise UserError(f"no model directory was given for reward model {checkpoint_id!r}", param="reward_model_dirs")
    directory = model_dirs[checkpoint_id]
    info = read_model_info(directory) or {}
    if info.get("kind", "reward_model") != "reward_model":
        raise UserError(
            f"checkpoint {checkpoint_id!r} holds a {info['kind']!r} model, not a reward model", param="reward"
        )
    model, tokenizer = load_reward_model(directory)
    model.to(device).eval().requires_grad_(False)
    mean, std = info.get("reward_mean"), info.get("reward_std")
    if spec.normalize and (mean is None or std is None or not std > 0):
        on_event("warning", f"reward model {checkpoint_id!r} has no reward statistics: its raw scores are used")
    max_length = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    n_params = sum(p.numel() for p in model.parameters())
    on_event("info", f"loaded reward model {checkpoint_id!r} ({n_params:,} parameters)")
    return RewardModel(
        checkpoint_id=checkpoint_id, model=model, tokenizer=tokenizer, spec=spec, mean=mean, std=std,
        max_length=max_length,
    )  # fmt: skip
