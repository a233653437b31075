"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1, https://arxiv.org/abs/2402.03300).

One loop in numbered sections, one rollout per pass:

1. rollout: `rollout_batch_size` prompts (a function of (seed, rollout)), G = `num_generations`
   completions each, sampled over the KV cache by a generator seeded with (seed, rollout);
2. rewards and KL: the job's reward for every completion (`trainers.rl.rewards`); log-probs of the
   rollout policy when the rollout feeds more than one optimizer step, and of the reference;
3. advantages: each completion's reward against its group's, ``Â = (r − mean_G) / (std_G + eps)``
   (without the division for Dr. GRPO), the same for every token of the completion;
4. clipped updates: μ = `num_iterations` passes over the rollout's minibatches, one optimizer step
   each, minimising ``−min(ρÂ, clip(ρ, 1 − ε_low, 1 + ε_high)Â) + β·k3`` per token, aggregated over
   the whole step (`trainers.ops.policy_losses`), so micro-batching does not change the gradient.

With μ = 1 and one minibatch per rollout (the defaults) the policy that sampled is the one being
trained: π_old is the current policy detached, ρ = 1, and no extra forward pass is needed (as TRL).
The optimisation plumbing is `trainers.loop`'s. Checkpoints happen between rollouts (a rollout is
never split across a resume). Stops are polled before each rollout, after its sampling, between
completions while it is graded and after its grading, never during its updates: a cancel during a
slow sampling or grading phase drops the rollout, nothing of which was trained on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.data.batching import split_micro_batches
from trainers.data.prompts import PromptOrder, tokenize_prompt_split
from trainers.loop import TrainingLoop, announce_model, seed_everything
from trainers.models.checkpoint import load_trainer_state
from trainers.models.loading import default_device, disable_dropout, load_policy
from trainers.models.lora import load_trainable_model
from trainers.ops.advantages import group_advantages
from trainers.ops.kl import kl_k3
from trainers.ops.logprobs import selective_log_softmax
from trainers.ops.policy_losses import aggregate, clipped_policy_loss, entropy_from_logits, loss_normalizer
from trainers.rl.online import (
    completion_stats,
    evaluate_policy,
    frozen_logprobs,
    reference_policy,
    run_rollout_updates,
    sample_rollout,
    sampling_generator,
    select_rows,
)
from trainers.rl.response_logprobs import response_logits
from trainers.rl.rewards import RewardComputer, RewardScores, decode_completions
from trainers.rl.rollout import Rollout
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import GRPOHyperparameters, GRPOJob
from trainers.spec.results import RunResult, TrainingData


@dataclass
class GRPOBatch:
    """Completions of a rollout with what the clipped updates need.

    Attributes:
        rollout: B = prompts × G completions, the G of each prompt consecutive.
        advantages: (B,) float32 group-relative advantage of each completion.
        old_logprobs: (B, A) log π_old of the response tokens, or None when π_old is the policy
            being trained (μ = 1, one minibatch).
        ref_logprobs: (B, A) log π_ref, or None when β = 0.
    """

    rollout: Rollout
    advantages: Tensor
    old_logprobs: Tensor | None
    ref_logprobs: Tensor | None

    def select(self, rows: Sequence[int]) -> GRPOBatch:
        """The batch restricted to some rows (padding columns trimmed, see `select_rows`)."""
        rollout = select_rows(self.rollout, rows)
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.advantages.device)
        width = rollout.response_ids.shape[1]
        return GRPOBatch(
            rollout=rollout,
            advantages=self.advantages[index],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[index, :width],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[index, :width],
        )


def train_grpo(
    job: GRPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with GRPO on prompt rows, rewarded by the job's reward spec.

    Args:
        job: the GRPO job spec.
        data: canonical prompt rows (train; optional eval, whose mean reward is reported as
            ``eval/reward/mean`` with one completion per prompt).
        callbacks: metrics, checkpoints, events and cooperative stop.
        resume_from: a checkpoint directory to continue from.

    Returns:
        The run's status, the step reached and the last step's metrics.

    Raises:
        UserError: bad data or spec; ModelNotFoundError for a model that cannot be loaded.
        NumericalError: a non-finite loss or gradient norm, naming the step.
    """
    hp = job.hyperparameters
    G = hp.num_generations
    device = default_device()
    seed_everything(job.seed)  # before adapters are drawn; a resumed run restores its RNG states later
    state = load_trainer_state(resume_from) if resume_from is not None else None

    # Policy (fresh adapters for LoRA, or the checkpoint's model), prompts, reward and reference.
    policy, tokenizer = load_trainable_model(load_policy, job, resume_from, task="causal_lm")
    if hp.disable_dropout:
        disable_dropout(policy)
    policy.to(device).train()
    announce_model(callbacks, job.base_model, [policy], device)
    prompts = tokenize_prompt_split(data.train, tokenizer, max_prompt_length=hp.max_prompt_length, split="train",
                                    callbacks=callbacks)  # fmt: skip
    eval_prompts = tokenize_prompt_split(data.eval, tokenizer, max_prompt_length=hp.max_prompt_length, split="eval",
                                         callbacks=callbacks) if data.eval else []  # fmt: skip
    order = PromptOrder(num_rows=len(prompts), rollout_batch_size=hp.rollout_batch_size, seed=job.seed)
    micro_size = max(1, hp.batch_size // hp.gradient_accumulation_steps)  # rows per forward
    rewarder = RewardComputer.from_job(job, policy_tokenizer=tokenizer, device=device, on_event=callbacks.on_event,
                                       batch_size=micro_size)  # fmt: skip
    reference = reference_policy(policy, job, resumed=state is not None, device=device) if hp.beta > 0 else None
    steps_per_rollout = hp.num_iterations * hp.num_minibatches
    loop = TrainingLoop(
        job, callbacks, model=policy, tokenizer=tokenizer, state=state,
        model_info=lambda: {"kind": "causal_lm", "adapter": job.lora is not None, "base_model": job.base_model},
        num_rows=len(prompts), steps_per_epoch=order.rollouts_per_epoch * steps_per_rollout,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    evaluate = functools.partial(evaluate_policy, policy, eval_prompts, tokenizer, rewarder, hp, seed=job.seed)
    evaluate = evaluate if eval_prompts else None

    while loop.step < loop.total_steps:
        if loop.stop_requested():  # between rollouts: a checkpoint never splits one
            return loop.stop(metrics)
        rollout_number = -(-loop.step // steps_per_rollout) + 1  # rollouts done, rounded up, plus one

        # 1. Rollout: G completions for each of the rollout's prompts.
        rows = [prompts[i] for i in order.rollout_indices(rollout_number)]
        generator = sampling_generator(job.seed, rollout_number, device)
        rollout = sample_rollout(policy, [p.ids for p in rows for _ in range(G)], tokenizer, hp, generator=generator)
        items = [p.item for p in rows for _ in range(G)]
        if loop.stop_requested():  # no step of this rollout has run: dropping it splits nothing
            return loop.stop(metrics)

        # 2. Rewards and KL: the reward of every completion (a stop request ends a slow grading);
        #    π_old only when the policy will have moved before some minibatch is trained on; π_ref
        #    for the k3 penalty.
        scores = rewarder.score(items, decode_completions(tokenizer, rollout), rollout,
                                should_stop=loop.stop_requested)  # fmt: skip
        if scores is None or loop.stop_requested():
            return loop.stop(metrics)
        old = ref = None
        if steps_per_rollout > 1:
            old = frozen_logprobs(policy, rollout, hp.temperature, batch_size=micro_size)  # (B, A)
        if reference is not None:
            ref = frozen_logprobs(reference, rollout, hp.temperature, batch_size=micro_size, reference=True)  # (B, A)

        # 3. Advantages: each completion against the other completions of its prompt.
        advantages, group_std = group_advantages(scores.rewards, G, scale_std=hp.scale_rewards)  # (B,), (B/G,)
        batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=old, ref_logprobs=ref)
        rollout_metrics = _rollout_metrics(scores, group_std, rollout)

        # 4. Clipped updates: μ passes over the minibatches, one optimizer step each (fewer when
        #    the run ends first). Evaluation and checkpoints that fall due wait for the rollout's end.
        completions = list(range(hp.completions_per_rollout))
        minibatches = [completions[i : i + hp.batch_size] for i in range(0, len(completions), hp.batch_size)]
        schedule = (minibatches * hp.num_iterations)[: loop.total_steps - loop.step]
        metrics = run_rollout_updates(
            loop, schedule, lambda _, minibatch, batch=batch: accumulate_gradients(policy, batch.select(minibatch), hp),
            rollout_metrics, evaluate, metrics,
        )  # fmt: skip

    return loop.finish(metrics)


def accumulate_gradients(policy: nn.Module, batch: GRPOBatch, hp: GRPOHyperparameters) -> tuple[Tensor, list[str]]:
    """Backward the GRPO loss of one optimizer step, micro-batch by micro-batch.

    Per token: ``ℓ = −min(ρÂ, clip(ρ, 1 − ε_low, 1 + ε_high)Â) + β·k3(log π, log π_ref)`` with
    ``ρ = exp(log π − log π_old)``, aggregated as `hp.loss_aggregation` says and divided by the
    normaliser of the whole step (its token count, sequence count, or sequences × constant), so the
    micro-batch losses add up to the step's loss and the accumulated gradient does not depend on
    `gradient_accumulation_steps`.

    Args:
        policy: the model being trained (train mode); gradients accumulate into its parameters.
        batch: the step's completions (one minibatch of a rollout).
        hp: supplies the clip range, β, the aggregation, temperature and micro-batch count.

    Returns:
        stats: (S,) the step's statistics, on the device: ``train/loss``, ``policy/clipfrac`` (share
            of tokens whose clipped term was chosen), ``policy/approx_kl`` (k3 of the ratio),
            ``policy/entropy`` (mean per token), and with β > 0 ``objective/kl`` (mean over
            completions of the summed k3 against the reference, nats).
        names: the S metric names.
    """
    mask = batch.rollout.response_mask  # (B, A)
    num_tokens = mask.sum().float()
    normalizer = loss_normalizer(
        hp.loss_aggregation, num_tokens=num_tokens, num_sequences=mask.shape[0],
        max_tokens=hp.max_completion_tokens_constant or hp.max_new_tokens,
    )  # fmt: skip
    with_kl = batch.ref_logprobs is not None
    sums = torch.zeros(5 if with_kl else 4, device=mask.device)  # (S,)
    for rows in split_micro_batches(list(range(mask.shape[0])), hp.gradient_accumulation_steps):
        micro = batch.select(rows)
        m = micro.rollout.response_mask  # (b, a)
        logits = response_logits(policy, micro.rollout, hp.temperature)  # (b, a, V)
        logp = selective_log_softmax(logits, micro.rollout.response_ids) * m  # (b, a)
        old = logp.detach() if micro.old_logprobs is None else micro.old_logprobs  # (b, a)
        policy_loss = clipped_policy_loss(
            logp, old, micro.advantages.unsqueeze(1), m, eps_low=hp.epsilon_low, eps_high=hp.epsilon_high,
            aggregation=hp.loss_aggregation, normalizer=normalizer,
        )  # fmt: skip
        loss = policy_loss.loss
        n = m.sum()
        with torch.no_grad():
            entropy = (entropy_from_logits(logits.detach()) * m).sum()
        micro_stats = [policy_loss.clip_frac * n, policy_loss.approx_kl * n, entropy]
        if with_kl:
            kl = kl_k3(logp, micro.ref_logprobs) * m  # (b, a)
            loss = loss + hp.beta * aggregate(kl, m, hp.loss_aggregation, normalizer=normalizer)
            micro_stats.append(kl.detach().sum())
        loss.backward()
        sums += torch.stack([loss.detach(), *micro_stats])
    one, sequences = num_tokens.new_tensor(1.0), num_tokens.new_tensor(float(mask.shape[0]))
    counts = torch.stack([one, num_tokens, num_tokens, num_tokens, sequences])[: len(sums)]  # (S,)
    names = ["train/loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy", "objective/kl"]
    return sums / counts, names[: len(sums)]


def _rollout_metrics(scores: RewardScores, group_std: Tensor, rollout: Rollout) -> dict[str, float]:
    """The rollout's reward and completion statistics, as host floats, in one synchronisation."""
    stats = {f"reward/{name}": values.mean() for name, values in scores.per_grader.items()}
    stats |= {
        "reward/mean": scores.rewards.float().mean(),
        "reward/std": scores.rewards.float().std(),
        "reward/error_fraction": torch.tensor(scores.rows_with_errors / len(scores.rewards)),
        "frac_reward_zero_std": (group_std == 0).float().mean(),
        **completion_stats(rollout),
    }
    values = torch.stack([v.float().cpu() for v in stats.values()]).tolist()
    return dict(zip(stats, values, strict=True))
