"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1, https://arxiv.org/abs/2402.03300).

One loop (`train_grpo`, in numbered steps), one rollout per pass:

- rollout: `rollout_batch_size` prompts (a function of (seed, rollout)), G = `num_generations`
  completions each, sampled by the run's generation backend (`trainers.rl.generation`: the policy
  itself over its KV cache, or vLLM), each completion from a seed of (seed, rollout, prompt,
  completion);
- rewards and KL: the job's reward for every completion (`trainers.rl.rewards`); log-probs of the
  rollout policy when the rollout feeds more than one optimizer step, and of the reference;
- advantages: each completion's reward against its group's, ``Â = (r − mean_G) / (std_G + eps)``
  (without the division for Dr. GRPO), the same for every token of the completion; or RLOO's
  leave-one-out baseline, or REINFORCE++'s per-token returns standardised over the rollout
  (`advantage_estimator`, `rollout_advantages`);
- clipped updates: μ = `num_iterations` passes over the rollout's minibatches, one optimizer step
  each, minimising ``−min(ρÂ, clip(ρ, 1 − ε_low, 1 + ε_high)Â) + β·k3`` per token (ρ per token, or
  GSPO's per sequence: `importance_sampling_level`), aggregated over the whole step
  (`trainers.ops.policy_losses`), so micro-batching does not change the gradient; with `tis_cap`,
  each token's policy term weighted by its truncated importance weight against the engine's
  sampling log-probs. The backend is given the new weights after each step.

With μ = 1 and one minibatch per rollout (the defaults) the policy that sampled is the one being
trained: π_old is the current policy detached, ρ = 1, and no extra forward pass is needed (as TRL).
The set-up is `trainers.run_setup`'s, the optimisation plumbing `trainers.loop`'s. Checkpoints
happen between rollouts (a rollout is never split across a resume). Stops are polled before each
rollout, after its sampling, between completions while it is graded and after its grading, never
during its updates: a cancel during a slow sampling or grading phase drops the rollout, nothing of
which was trained on.

DAPO's dynamic sampling (``dynamic_sampling``) fills a rollout in rounds, dropping the groups whose
rewards are all equal, and its overlong shaping (``overlong_buffer``) adds a length penalty to the
rewards (`trainers.rl.dynamic_sampling`).

Over several processes (`trainers.rl.shares`): each rank samples and grades its share of the
rollout's prompts, whole groups, then every rank holds the whole rollout, so advantages and the
reward statistics are global; each rank runs its share of every micro-batch, its loss divided by the
step's global normaliser, and the loop all-reduces the gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.data.batching import split_micro_batches
from trainers.data.prompts import PromptOrder
from trainers.distributed.ranks import Ranks
from trainers.ops.advantages import group_advantages, reinforce_pp_advantages, rloo_advantages, standardize
from trainers.ops.kl import kl_k3, kl_penalized_rewards
from trainers.ops.logprobs import selective_log_softmax
from trainers.ops.policy_losses import (
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    loss_normalizer,
    truncated_importance_weights,
)
from trainers.rl.dynamic_sampling import DynamicSampler, groups_with_signal, sample_with_signal, shaped_scores
from trainers.rl.generation import create_backend
from trainers.rl.learning_signal import LearningSignal
from trainers.rl.online import (
    completion_stats,
    frozen_logprobs,
    rollout_prompts,
    select_rows,
)
from trainers.rl.response_logprobs import response_logits
from trainers.rl.rewards import RewardComputer, RewardScores
from trainers.rl.rollout import Rollout
from trainers.rl.samples import report_samples
from trainers.rl.shares import evaluate_policy, sample_and_score
from trainers.run_setup import prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import GRPOHyperparameters, GRPOJob
from trainers.spec.results import RunResult, TrainingData
from trainers.token_count import TokenCount, sequence_tokens


@dataclass
class GRPOBatch:
    """Completions of a rollout with what the clipped updates need.

    Attributes:
        rollout: B = prompts × G completions, the G of each prompt consecutive.
        advantages: (B,) float32 advantage of each completion ('grpo', 'rloo'), or (B, A) of each
            token ('reinforce_pp'), 0 on padding.
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
            advantages=self.advantages[index] if self.advantages.dim() == 1 else self.advantages[index, :width],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[index, :width],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[index, :width],
        )


def train_grpo(
    job: GRPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with GRPO on prompt rows, rewarded by the job's reward spec.

    1. Set up the run (`prepare_run`): the policy, the tokenised prompts, π_ref when β > 0; then
       the prompts' order, the reward and the training loop (`TrainingLoop`). Rollout after rollout:
    2. stop when asked, between rollouts;
    3. rollout: G completions for each of the rollout's prompts (with dynamic sampling, rounds of
       the next prompts until the rollout holds enough groups whose rewards differ);
    4. rewards, overlong penalty included (a stop request while sampling or grading drops the
       rollout), π_old and π_ref;
    5. group-relative advantages;
    6. clipped updates: one optimizer step per minibatch, each step's metrics logged when due, and
    7. the rollout's last step evaluated when one of its steps fell due;
    8. a few of its completions reported (`Callbacks.on_samples`) when one of its steps was logged,
       and a checkpoint after the rollout when one of its steps fell due.

    Args:
        job: the GRPO job spec.
        data: canonical prompt rows (train; optional eval, whose mean reward is reported as
            ``eval/reward/mean`` with one completion per prompt).
        callbacks: the run's callbacks (metrics, checkpoints, events, stop requests).
        resume_from: a GRPO checkpoint to continue from, or None.

    Returns:
        The run's `RunResult`; it raises what `trainers.run` lists.
    """
    hp = job.hyperparameters
    G = hp.num_generations

    # 1. The policy (fresh adapters for LoRA, or the checkpoint's model), the prompts tokenised once,
    #    π_ref for the k3 penalty (none with β = 0); the job's reward; optimiser, schedule, step
    #    and RNG (restored when resuming), cadence and checkpoints.
    reference = "during_training" if hp.beta > 0 else None
    run = prepare_run(job, data, callbacks, resume_from=resume_from, reference=reference)
    policy, tokenizer, micro_size, ranks = run.model, run.tokenizer, run.micro_batch_size, run.ranks
    order = PromptOrder(num_rows=len(run.train), rollout_batch_size=hp.rollout_batch_size, seed=job.seed)
    rewarder = RewardComputer.from_job(job, policy_tokenizer=tokenizer, device=run.device, on_event=callbacks.on_event,
                                       batch_size=micro_size, compute=run.compute)  # fmt: skip
    steps_per_rollout = hp.num_iterations * hp.num_minibatches
    # Dynamic sampling draws a varying number of prompt batches per rollout: checkpoints keep the count.
    sampler = DynamicSampler(prompts_per_rollout=hp.rollout_batch_size, group_size=G, max_rounds=hp.max_sampling_rounds,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    tokens = TokenCount()  # the tokens trained on, ``train/num_tokens``: sampled, so checkpoints keep the count

    def extra_state() -> dict:
        return tokens.state_dict() | ({"dynamic_sampling": sampler.state_dict()} if hp.dynamic_sampling else {})

    loop = run.training_loop(order.rollouts_per_epoch * steps_per_rollout, extra_state=extra_state)
    if run.resumed:
        tokens.load_state_dict(run.state.get("extra"))
    if hp.dynamic_sampling and run.resumed:  # a checkpoint without the count: one batch per rollout so far
        sampler.load_state_dict((run.state.get("extra") or {}).get("dynamic_sampling")
                                or {"prompt_batches_drawn": -(-loop.step // steps_per_rollout)})  # fmt: skip
    signal = LearningSignal(job.reward, callbacks.on_event)
    metrics: dict[str, float] = {}
    backend = create_backend(policy, tokenizer, compute=run.compute, hp=hp, ranks=ranks, base_model=job.base_model)
    backend.plan(rollouts=-(-(loop.total_steps - loop.step) // steps_per_rollout))
    run.callbacks.on_event("info", backend.describe())

    with run.autocast(), backend:  # every forward pass below (sampling too) runs in the job's precision
        while loop.step < loop.total_steps:
            # 2. Cooperative stop, between rollouts: a checkpoint never splits one.
            if loop.stop_requested():
                return loop.stop(metrics)

            # 3-4. Rollout and rewards: G completions for each of the rollout's prompts (each rank
            #    samples and grades its share of the prompts, then all hold the whole rollout), unless
            #    a stop is requested first (the rollout is then dropped); the overlong penalty added.
            #    A grader erring on every completion for 3 rounds fails the run; 5 rounds without a
            #    group whose rewards differ warn (the rewards are global: every rank decides alike).
            if hp.dynamic_sampling:  # DAPO: rounds of the next prompts until R groups have differing rewards
                with backend.awake():
                    filled = sample_with_signal(backend, run.train, order, tokenizer, rewarder, hp, sampler=sampler,
                                                signal=signal, seed=job.seed, ranks=ranks, callbacks=run.callbacks,
                                                should_stop=loop.stop_requested)  # fmt: skip
                if filled is None:
                    return loop.stop(metrics)
                if filled.rollout is None:  # no group with signal within max_sampling_rounds: no update
                    continue
                rollout, scores, sampling_stats = filled.rollout, filled.scores, filled.stats
            else:
                number, rows = rollout_prompts(order, run.train, step=loop.step, steps_per_rollout=steps_per_rollout)
                with backend.awake():
                    sampled = sample_and_score(backend, rows, tokenizer, rewarder, hp, seed=job.seed,
                                               rollout_number=number, group_size=G, ranks=ranks,
                                               callbacks=run.callbacks, should_stop=loop.stop_requested)  # fmt: skip
                if sampled is None:
                    return loop.stop(metrics)
                rollout, scores = sampled[0], shaped_scores(sampled[1], sampled[0], hp)
                signal.observe(scores, 1.0 - groups_with_signal(scores.rewards, G).float().mean().item())
                sampling_stats = {}

            # 4. KL: π_old when the policy will have moved before some minibatch is trained on, or when
            #    the KL penalty goes into the reward (rloo, reinforce_pp); π_ref for the KL (each rank
            #    computes its share of the rows).
            old = ref = None
            if steps_per_rollout > 1 or (run.reference is not None and hp.advantage_estimator != "grpo"):
                old = frozen_logprobs(policy, rollout, hp.temperature, batch_size=micro_size, ranks=ranks)  # (B, A)
            if run.reference is not None:
                ref = frozen_logprobs(run.reference, rollout, hp.temperature, batch_size=micro_size, reference=True,
                                      ranks=ranks)  # fmt: skip

            # 5. Advantages, as `advantage_estimator` says, from the whole rollout (on every rank alike);
            #    with μ = 1 and one minibatch π_old stays the trained policy detached (ρ = 1 exactly).
            advantages = rollout_advantages(scores.rewards, rollout.response_mask, old, ref, hp)  # (B,) or (B, A)
            group_std = scores.rewards.float().view(-1, G).std(dim=1)  # (B/G,) of the graded rewards
            old = old if steps_per_rollout > 1 else None
            batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=old, ref_logprobs=ref)
            rollout_stats = rollout_statistics(scores, group_std, rollout) | sampling_stats

            # 6. Clipped updates: μ passes over the minibatches, one optimizer step each (fewer when
            #    the run ends first), each step's metrics with the rollout's.
            completions = list(range(len(batch.advantages)))  # fewer than a full rollout: dynamic sampling's bound
            lengths = sequence_tokens(rollout)  # (B,) what the policy's training forwards read of each completion
            minibatches = [completions[i : i + hp.batch_size] for i in range(0, len(completions), hp.batch_size)]
            schedule = (minibatches * hp.num_iterations)[: loop.total_steps - loop.step]
            first, last = loop.step, loop.step + len(schedule)  # the steps before and at the rollout's end
            for minibatch in schedule:
                loop.next_step()
                stats, names = accumulate_gradients(
                    policy, batch.select(minibatch), hp, backward=loop.backward, ranks=ranks
                )  # (S,) fmt: skip
                metrics = loop.update(stats, names) | rollout_stats | tokens.add(sum(lengths[i] for i in minibatch))
                backend.sync_weights(policy)

                # 7. Evaluation at the rollout's last step, when one of its steps fell due; metrics
                #    reported when logging falls due and with every evaluation.
                evaluated = bool(run.eval) and loop.step == last and loop.eval_due(since=first)
                if evaluated:
                    with backend.awake():
                        metrics |= evaluate_policy(backend, run.eval, tokenizer, rewarder, hp, seed=job.seed,
                                                   ranks=ranks)  # fmt: skip
                loop.log(metrics, evaluated=evaluated)

            # 8. A few of the rollout's completions with their rewards, when one of its steps was logged
            #    (from different prompts first); a checkpoint after the rollout, when one of its steps fell due.
            if loop.log_due(since=first):
                report_samples(run.callbacks, loop.step, tokenizer, rollout, scores.rewards, count=hp.log_samples,
                               group_size=G, per_grader=scores.per_grader,
                               extras={"advantage": advantages} if advantages.dim() == 1 else None)  # fmt: skip
            if loop.checkpoint_due(since=first):
                loop.checkpoint(metrics)

        return loop.finish(metrics)


def rollout_advantages(
    rewards: Tensor, mask: Tensor, old_logprobs: Tensor | None, ref_logprobs: Tensor | None, hp: GRPOHyperparameters
) -> Tensor:
    """The rollout's advantages by `hp.advantage_estimator` (none uses a critic).

    - ``grpo``: ``(r − mean_G)/(std_G + eps)``, or ``r − mean_G`` without `scale_rewards` (`group_advantages`);
    - ``rloo``: the leave-one-out baseline (`rloo_advantages`) of ``r − β·Σ_t (log π_old − log π_ref)_t``
      when β > 0 (the sequence's k1 KL in the reward, as the RLOO paper and TRL's RLOOTrainer), then
      standardised over the rollout when `normalize_advantages` (`standardize`);
    - ``reinforce_pp``: REINFORCE++ (`reinforce_pp_advantages`): the reward-to-go of the per-token
      rewards ``−β·(log π_old − log π_ref)_t`` plus the score at the last token (`kl_penalized_rewards`),
      standardised over every token of the rollout.

    Args:
        rewards: (B,) the graded reward of each completion, the G of a prompt consecutive.
        mask: (B, A) 1 on response tokens.
        old_logprobs: (B, A) log π_old; needed by ``rloo`` and ``reinforce_pp`` when β > 0.
        ref_logprobs: (B, A) log π_ref, or None when β = 0.
        hp: the estimator, G, β and the options above.

    Returns:
        (B,) float32 per completion (``grpo``, ``rloo``) or (B, A) per token (``reinforce_pp``).
    """
    G = hp.num_generations
    with_kl = ref_logprobs is not None and old_logprobs is not None
    match hp.advantage_estimator:
        case "grpo":
            return group_advantages(rewards, G, scale_std=hp.scale_rewards)[0]  # (B,)
        case "rloo":
            if with_kl:  # the summed per-token rewards are the score minus β·(the sequence's k1)
                rewards = kl_penalized_rewards(rewards, old_logprobs, ref_logprobs, mask, hp.beta)[0].sum(dim=1)
            advantages = rloo_advantages(rewards, G)  # (B,)
            return standardize(advantages) if hp.normalize_advantages else advantages
        case "reinforce_pp":
            zeros = torch.zeros(mask.shape, device=mask.device)  # (B, A) no KL when β = 0
            old, ref = (old_logprobs, ref_logprobs) if with_kl else (zeros, zeros)
            token_rewards, _ = kl_penalized_rewards(rewards, old, ref, mask, hp.beta)  # (B, A)
            return reinforce_pp_advantages(token_rewards, mask)  # (B, A)
        case _:
            raise ValueError(f"unknown advantage estimator {hp.advantage_estimator!r}")


def accumulate_gradients(
    policy: nn.Module,
    batch: GRPOBatch,
    hp: GRPOHyperparameters,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    ranks: Ranks | None = None,
) -> tuple[Tensor, list[str]]:
    """Backward the GRPO loss of one optimizer step, micro-batch by micro-batch.

    Per token: ``ℓ = −w·min(ρÂ, clip(ρ, 1 − ε_low, 1 + ε_high)Â) + β·k3(log π, log π_ref)`` with
    ``ρ = exp(log π − log π_old)`` (GSPO's sequence ratio with ``importance_sampling_level``
    ``sequence``) and w the truncated importance weight with ``tis_cap`` (else 1); the k3 term
    only with the ``grpo`` estimator (``rloo`` and ``reinforce_pp`` have their KL penalty in the
    reward already). Aggregated as `hp.loss_aggregation` says and divided by the
    normaliser of the whole step (its token count, sequence count, or sequences × constant), so the
    micro-batch losses add up to the step's loss and the accumulated gradient does not depend on
    `gradient_accumulation_steps`. On several ranks each runs its share of every micro-batch
    (`Ranks.batch_share`) and still divides by the whole step's normaliser: the ranks' gradients
    and statistics add up to one process's.

    Args:
        policy: the model being trained (train mode); gradients accumulate into its parameters.
        batch: the step's completions (one minibatch of a rollout).
        hp: supplies the clip range, β, the aggregation, temperature and micro-batch count.
        backward: runs a loss's backward pass (`TrainingLoop.backward`, which scales it under fp16,
            and by the world size on several ranks).
        ranks: the job's processes (default: one).

    Returns:
        stats: (S,) the step's statistics, on the device (on several ranks, this rank's share of
            each, which `TrainingLoop.update` sums): ``train/loss``, ``policy/clipfrac`` (share
            of tokens whose clipped term was chosen), ``policy/approx_kl`` (k3 of the ratio),
            ``policy/entropy`` (mean per token), with β > 0 ``objective/kl`` (mean over
            completions of the summed k3 against the reference, nats), and with ``tis_cap``
            ``policy/tis_weight_mean`` and ``policy/tis_clipfrac`` (per token).
        names: the S metric names.
    """
    mask = batch.rollout.response_mask  # (B, A)
    num_tokens = mask.sum().float()
    normalizer = loss_normalizer(
        hp.loss_aggregation, num_tokens=num_tokens, num_sequences=mask.shape[0],
        max_tokens=hp.max_completion_tokens_constant or hp.max_new_tokens,
    )  # fmt: skip
    ranks = ranks or Ranks()
    with_kl = batch.ref_logprobs is not None
    sums = torch.zeros(4 + with_kl + 2 * (hp.tis_cap is not None), device=mask.device)  # (S,)
    for rows in split_micro_batches(list(range(mask.shape[0])), hp.gradient_accumulation_steps):
        mine, weight = ranks.batch_share(rows)
        micro = batch.select(mine)
        m = micro.rollout.response_mask  # (b, a)
        logits = response_logits(policy, micro.rollout, hp.temperature)  # (b, a, V)
        logp = selective_log_softmax(logits, micro.rollout.response_ids) * m  # (b, a)
        old = logp.detach() if micro.old_logprobs is None else micro.old_logprobs  # (b, a)
        advantages = micro.advantages.unsqueeze(1) if micro.advantages.dim() == 1 else micro.advantages  # (b, 1|a)
        tis = None
        if hp.tis_cap is not None:  # the engine's sampling probabilities against the trainer's π_old
            tis = truncated_importance_weights(old, micro.rollout.logprobs, m, hp.tis_cap)
        policy_loss = clipped_policy_loss(
            logp, old, advantages, m, eps_low=hp.epsilon_low, eps_high=hp.epsilon_high,
            aggregation=hp.loss_aggregation, normalizer=normalizer,
            importance_sampling_level=hp.importance_sampling_level,
            token_weights=None if tis is None else tis.weights,
        )  # fmt: skip
        loss = policy_loss.loss
        n = m.sum()
        with torch.no_grad():
            entropy = (entropy_from_logits(logits.detach()) * m).sum()
        micro_stats = [policy_loss.clip_frac * n, policy_loss.approx_kl * n, entropy]
        if with_kl:
            kl = kl_k3(logp, micro.ref_logprobs) * m  # (b, a) reported with every estimator
            if hp.advantage_estimator == "grpo":  # rloo, reinforce_pp: the KL is in the reward already
                loss = loss + hp.beta * aggregate(kl, m, hp.loss_aggregation, normalizer=normalizer)
            micro_stats.append(kl.detach().sum())
        if tis is not None:
            micro_stats += [tis.mean * n, tis.clip_frac * n]
        backward(weight * loss)
        sums += weight * torch.stack([loss.detach(), *micro_stats])
    one, sequences = num_tokens.new_tensor(1.0), num_tokens.new_tensor(float(mask.shape[0]))
    counts = [one, num_tokens, num_tokens, num_tokens] + ([sequences] if with_kl else [])
    names = ["train/loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy", "objective/kl"][: len(counts)]
    if hp.tis_cap is not None:
        counts += [num_tokens, num_tokens]
        names += ["policy/tis_weight_mean", "policy/tis_clipfrac"]
    return sums / torch.stack(counts), names  # (S,)


def rollout_statistics(scores: RewardScores, group_std: Tensor, rollout: Rollout) -> dict[str, float]:
    """The rollout's reward and completion statistics, as host floats, in one synchronisation.

    Args:
        scores: the completions' rewards.
        group_std: (B/G,) the std of each prompt's rewards.
        rollout: the completions.

    Returns:
        ``reward/<grader>``, ``reward/mean``, ``reward/std``, ``reward/error_fraction``,
        ``frac_reward_zero_std`` (the share of groups whose rewards teach nothing) and
        `completion_stats`.
    """
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
