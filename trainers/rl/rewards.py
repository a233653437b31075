"""The rewards of PPO and GRPO: reward-model scores and graders, one number per completion (DESIGN §7).

`RewardComputer.from_job` loads what a job's reward spec names, once: each reward-model checkpoint
(frozen, eval mode, on the training device) with the reward statistics its job recorded, and the
server's registry of reward functions. `RewardComputer.score` then rates a rollout's completions:

1. each reward model scores prompt ⊕ completion, read at the last token, then normalised and
   clipped as the spec asks (`normalize_model_score`). Which tokens it reads is decided once, when
   it is loaded (`same_tokenizer`):

   - a reward model with the policy's tokenizer (same vocabulary, same pad/EOS/BOS ids) reads the
     rollout's own token ids (`rollout_rows`): the prompt as the policy saw it, then the response
     as sampled, EOS included when one was sampled and nothing appended to a completion cut at
     `max_new_tokens`, as TRL and OpenRLHF score. Decoding to text and re-tokenising is lossy:
     byte-level ids that are not valid UTF-8 decode to U+FFFD and re-encode as other bytes, a
     non-canonical tokenisation re-encodes differently, and a cut completion would gain an EOS
     the policy never produced;
   - any other reward model (one from another family: the general case) reads the prompt row and
     the decoded completion, tokenised with its own tokenizer exactly as its training rendered a
     prompt and a chosen response (`tokenize_pairs`: the prompt as text or chat template, the
     completion, EOS).

   Both truncate alike to the reward model's context L: the prompt keeps its last L − 1 tokens,
   then the completion is cut to fit. Where the round trip is lossless (a prompt that
   `max_prompt_length` did not cut, a completion that re-encodes to its sampled ids and ends with
   EOS) they give the same score;
2. the spec's graders rate the completion text (decoded without special tokens) against the prompt
   row, and combine with the model scores (`evaluate_batch`);
3. a completion cut at the length limit loses `missing_eos_penalty`.

A grader that cannot grade a completion scores 0 for it; the rollout's errors are summarised in a
warning event (the first `MAX_ERROR_EVENTS` rollouts that have any) and counted in the result, not raised:
one bad row cannot stop a run (a grader failing on every row does, `trainers.rl.learning_signal`). A grader
call that overruns `GRADER_TIMEOUT_S` is such an error (`trainers.spec.graders`), and grading polls the
run's stop request between completions, so a cancel ends a slow rollout's grading instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.models.checkpoint import read_model_info
from trainers.models.reward import load_reward_model, rewards
from trainers.ops.kl import apply_missing_eos_penalty
from trainers.precision import ComputeSettings
from trainers.rl.rollout import Rollout
from trainers.spec.config import GRPOJob, PPOJob
from trainers.spec.errors import UserError
from trainers.spec.graders import GradingStopped, evaluate_batch
from trainers.spec.reward_functions import RewardFunction, load_registry
from trainers.spec.reward_validation import validate_reward_spec
from trainers.spec.rewards import ModelReward, RewardSpec, leaf_graders
from trainers.spec.score_rules import normalize_model_score

MAX_ERROR_EVENTS = 10  # rollouts whose grader errors are reported as events; later ones are only counted
ERROR_EXAMPLES = 3  # messages quoted in each event
DEFAULT_MAX_LENGTH = 2048  # a reward model whose config states no context length


@dataclass
class RewardModel:
    """A frozen reward-model checkpoint, the statistics that normalise its scores, and what it reads.

    With ``reads_policy_ids`` it scores the rollout's token ids as sampled (`rollout_rows`);
    without, the decoded completion re-tokenised with its own tokenizer (`tokenize_pairs`).
    """

    checkpoint_id: str
    model: nn.Module  # eval mode, no gradients, on the training device
    tokenizer: PreTrainedTokenizerBase
    spec: ModelReward  # how its scores are normalised and clipped
    mean: float | None  # reward mean recorded by its job (None when the directory has none)
    std: float | None
    max_length: int  # most tokens of prompt + completion it reads
    reads_policy_ids: bool  # its tokenizer is the policy's: it scores the rollout's token ids, not re-tokenised text


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

    A reward model that shares the policy's tokenizer scores exactly the token ids the policy
    sampled, since decoding and re-tokenising them can change them; any other reward model scores
    the completion text rendered with its own tokenizer (see the module docstring).

    Args:
        spec: the job's validated reward spec.
        registry: reward functions by name (`load_registry`).
        reward_models: checkpoint id → loaded reward model, one for each checkpoint `spec` names;
            each knows whether it reads the policy's token ids (`RewardModel.reads_policy_ids`).
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
        policy_tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        on_event: Callable[[str, str], None],
        batch_size: int = 16,
        compute: ComputeSettings | None = None,
    ) -> RewardComputer:
        """Load everything the job's reward needs: its reward models and the function registry.

        Args:
            job: a PPO or GRPO job; its `reward_model_dirs` must hold a directory for every
                checkpoint the reward names, and its `reward_function_modules` the server's modules.
            policy_tokenizer: the policy's tokenizer; a reward model with the same one scores the
                rollout's token ids, any other the re-tokenised completion text.
            device: where the reward models run (the policy's device).
            on_event: receives info and warning events.
            batch_size: completions per reward-model forward.
            compute: the run's settings; the reward models are held in their compute type and
                attend with their kernel (`ComputeSettings.prepare_frozen`); None: fp32, as loaded.

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
                models[grader.checkpoint_id] = _load(
                    grader, job.reward_model_dirs, device, on_event, policy_tokenizer=policy_tokenizer, compute=compute
                )
        return cls(
            job.reward, registry=registry, reward_models=models, on_event=on_event, batch_size=batch_size,
            missing_eos_penalty=job.hyperparameters.missing_eos_penalty,
        )  # fmt: skip

    @torch.no_grad()
    def score(
        self,
        items: Sequence[Mapping[str, Any]],
        completions: Sequence[str],
        rollout: Rollout,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> RewardScores | None:
        """Rewards of B completions, each answering its own prompt row.

        Args:
            items: B prompt rows (``{"prompt": ..., **extra}``); GRPO repeats a row G times.
            completions: B completion texts, decoded without special tokens (`decode_completions`).
            rollout: the rollout they were sampled in (B rows): supplies ``ended_with_eos``, the device,
                and the token ids that reward models sharing the policy's tokenizer score.
            should_stop: the run's stop request, polled between completions while the graders run
                (`evaluate_batch`).

        Returns:
            The rewards, each grader's scores and the grader errors; None when `should_stop` ended
            the grading.
        """
        model_scores = {
            cid: self._model_scores(rm, items, completions, rollout) for cid, rm in self.reward_models.items()
        }
        try:
            results = evaluate_batch(self.spec, completions, items, self.registry, model_scores,
                                     should_stop=should_stop)  # fmt: skip
        except GradingStopped:
            return None
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
        self, rm: RewardModel, items: Sequence[Mapping[str, Any]], completions: Sequence[str], rollout: Rollout
    ) -> list[float]:
        """Normalised, clipped scores of one reward model: of the sampled ids or of the re-tokenised text."""
        if rm.reads_policy_ids and has_rows_for(rm.model, rollout.response_ids):
            raw = self._id_scores(rm, rollout)
        else:  # e.g. a policy with a larger embedding table (same tokenizer) sampled an id this model has no row for
            raw = self._text_scores(rm, items, completions)
        return [normalize_model_score(s, rm.spec, mean=rm.mean, std=rm.std) for s in raw]

    def _id_scores(self, rm: RewardModel, rollout: Rollout) -> list[float]:
        """Raw scores of the rollout's own prompt ⊕ response ids, `batch_size` rows per forward."""
        device = next(rm.model.parameters()).device
        input_ids, attention_mask = rollout_rows(rollout, rm.tokenizer.pad_token_id, rm.max_length)  # (B, T)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        raw: list[float] = []
        for start in range(0, input_ids.shape[0], self.batch_size):
            mask = attention_mask[start : start + self.batch_size]  # (b, T)
            width = int(mask.sum(dim=1).max())  # the chunk's longest row: rows are right-padded
            raw += rewards(rm.model, input_ids[start : start + self.batch_size, :width], mask[:, :width]).tolist()
        return raw

    def _text_scores(
        self, rm: RewardModel, items: Sequence[Mapping[str, Any]], completions: Sequence[str]
    ) -> list[float]:
        """Raw scores of prompt row + completion text, rendered with the reward model's tokenizer as in its training."""
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
        return raw

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


def rollout_rows(rollout: Rollout, pad_token_id: int, max_length: int) -> tuple[Tensor, Tensor]:
    """Each rollout row as one right-padded sequence, prompt ⊕ response, for a reward model.

    Row b of `Rollout.model_inputs` is ``[pad… prompt | response pad…]``, its prompt left-padded;
    `trainers.models.reward.rewards` gives the backbone no position ids, so its positions would
    count that padding (harmless under rotary embeddings, wrong under absolute ones). Here the
    row starts at column 0: ``[prompt' response' pad…]``, where prompt' is the prompt's last
    ``min(p_b, L − 1)`` tokens and response' the response's first ``min(a_b, L − |prompt'|)``
    tokens, the truncation `truncate_pair` applies to the text path (L = `max_length`).

    Args:
        rollout: B sampled responses and their prompts.
        pad_token_id: id written into the padding (masked).
        max_length: L ≥ 2, most tokens a row keeps.

    Returns:
        input_ids: (B, T) long, T ≤ L the longest kept row.
        attention_mask: (B, T) long, 1 on each row's first ``|prompt'| + |response'|`` columns.
    """
    input_ids, _, _ = rollout.model_inputs()  # (B, P+A)
    P = rollout.prompt_ids.shape[1]
    prompt_lengths = rollout.prompt_mask.sum(dim=1).clamp(max=max_length - 1)  # (B,) |prompt'|
    lengths = prompt_lengths + torch.minimum(rollout.response_lengths, max_length - prompt_lengths)  # (B,)
    columns = torch.arange(int(lengths.max()), device=input_ids.device)  # (T,)
    source = (P - prompt_lengths)[:, None] + columns  # (B, T) column of model_inputs each token comes from
    attention_mask = (columns < lengths[:, None]).long()  # (B, T)
    ids = input_ids.gather(1, source.clamp(max=input_ids.shape[1] - 1))  # (B, T)
    return ids.masked_fill(attention_mask == 0, pad_token_id), attention_mask


def has_rows_for(model: nn.Module, ids: Tensor) -> bool:
    """Whether `model`'s input embedding table has a row for every id in `ids`.

    Two models with one tokenizer can have tables of different sizes (a family's sizes pad the
    vocabulary differently), and a policy may sample any id its own table has.

    Args:
        model: a reward model (not a peft wrapper).
        ids: token ids of any shape.
    """
    return ids.numel() == 0 or int(ids.max()) < model.get_input_embeddings().weight.shape[0]


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether token ids mean the same under both tokenizers: equal vocabularies and pad, EOS and BOS ids.

    Chat templates are not compared: a reward model that reads the policy's ids reads the prompt
    as the policy's template rendered it.

    Args:
        a: one tokenizer (a reward model's).
        b: the other (the policy's).

    Returns:
        True when a reward model with tokenizer `a` can read ids sampled with tokenizer `b`.
    """
    special = ("pad_token_id", "eos_token_id", "bos_token_id")
    return all(getattr(a, name) == getattr(b, name) for name in special) and a.get_vocab() == b.get_vocab()


def _load(
    spec: ModelReward,
    model_dirs: Mapping[str, str],
    device: torch.device,
    on_event: Callable[[str, str], None],
    *,
    policy_tokenizer: PreTrainedTokenizerBase,
    compute: ComputeSettings | None = None,
) -> RewardModel:
    """Load one reward-model checkpoint, frozen, with its reward statistics; decide what it reads."""
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
    if compute is not None:
        compute.prepare_frozen(model)
    model.to(device).eval().requires_grad_(False)
    mean, std = info.get("reward_mean"), info.get("reward_std")
    if spec.normalize and (mean is None or std is None or not std > 0):
        on_event("warning", f"reward model {checkpoint_id!r} has no reward statistics: its raw scores are used")
    max_length = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    reads_policy_ids = same_tokenizer(tokenizer, policy_tokenizer)
    reads = "the sampled token ids" if reads_policy_ids else "the completion text re-tokenised with its own tokenizer"
    n_params = sum(p.numel() for p in model.parameters())
    on_event("info", f"loaded reward model {checkpoint_id!r} ({n_params:,} parameters); it scores {reads}")
    return RewardModel(
        checkpoint_id=checkpoint_id, model=model, tokenizer=tokenizer, spec=spec, mean=mean, std=std,
        max_length=max_length, reads_policy_ids=reads_policy_ids,
    )  # fmt: skip
