"""Proximal Policy Optimization for language models: actor, critic, frozen reward and reference (DESIGN §7).

Ziegler et al. 2019 (https://arxiv.org/abs/1909.08593) and InstructGPT (Ouyang et al. 2022, §3.5,
https://arxiv.org/abs/2203.02155), with TRL's and OpenRLHF's choices where the papers are silent
(Huang et al. 2024, "The N+ implementation details of RLHF with PPO", https://arxiv.org/abs/2403.17031).
One loop (`train_ppo`, in numbered steps), one rollout per pass:

- rollout: `rollout_batch_size` prompts (a function of (seed, rollout)), one completion each,
  sampled by the run's generation backend (`trainers.rl.generation`: the policy itself over its KV
  cache, or vLLM) at the job's temperature and top-p, each from a seed of (seed, rollout, prompt);
- rewards and KL: each completion's score (`trainers.rl.rewards`: reward models and graders, the
  missing-EOS penalty), clipped to ±`reward_clip` when set; log π_old: the sampling pass's own
  log-probs where the training model sampled in fp32 (the ``hf`` backend; as TRL, saving a forward
  pass: the first minibatch's ratio is 1 to about 1e-6), else recomputed by the policy in a full
  forward (bf16/fp16, or another engine such as vLLM), log π_ref and the
  critic's V_old; per-token rewards ``r_t = −β·(log π_old − log π_ref)_t`` plus the score at
  the last token (`kl_penalized_rewards`);
- advantages: GAE with (γ, λ), returns ``G = A + V_old``, advantages whitened over the rollout's
  tokens;
- clipped updates: `ppo_epochs` passes over the rollout in shuffled minibatches of `batch_size`
  completions, one optimizer step each (`accumulate_gradients`; with `tis_cap`, each token's policy
  term weighted by its truncated importance weight against the engine's sampling log-probs), the
  backend given the new weights after each; the KL controller then sees the rollout's KL.

The critic (`trainers.models.value`) has its own AdamW at `critic_learning_rate`; its gradients come
from the same backward pass, are clipped on their own, and step with the policy's through the
loop's guarded update (`trainers.loop.AuxiliaryModel`). Its loss is weighted by `vf_coef` as in
TRL; Adam being invariant to a constant scale, the weight acts through gradient clipping. By
default (`disable_dropout`) every pass runs without dropout (policy and critic stay in eval mode,
as TRL's PPO disables dropout), so the ratio measures the updates and nothing else; with dropout
kept, the updates run in train mode and the rollout's passes (sampling, π_old, π_ref, V_old) in
eval mode. Checkpoints happen between rollouts (a rollout is never split across a resume); stops
are polled before each rollout, after its sampling, between completions while it is graded and
after its grading, never during its updates, so a cancel during a slow sampling or grading phase
drops the rollout, nothing of which was trained on. The critic, its optimizer and the KL coefficient
are saved beside the policy.

Over several processes (DPPO, `trainers.rl.shares`): each rank samples and grades its share of the
rollout's prompts, then every rank holds the whole rollout, so the whitening statistics and the KL
the adaptive controller sees are those of the whole rollout; π_old, π_ref and V_old are computed
share by share; each rank runs its share of every micro-batch of every minibatch, its loss divided by
the minibatch's global token count, and the loop all-reduces the gradients of policy and critic
(spread over the ranks as the policy is).
Shapes: B completions, P prompt tokens, A response tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor, nn

from trainers.data.batching import split_micro_batches
from trainers.data.prompts import PromptOrder
from trainers.distributed.ranks import Ranks
from trainers.loop import AuxiliaryModel
from trainers.models.loading import disable_dropout, load_policy
from trainers.models.value import (
    CRITIC_DIR,
    initial_critic,
    response_values,
    rollout_values,
    save_critic,
    trainable_critic,
)
from trainers.ops.advantages import explained_variance, gae, whiten
from trainers.ops.kl import AdaptiveKLController, FixedKLController, kl_penalized_rewards
from trainers.ops.logprobs import selective_log_softmax
from trainers.ops.policy_losses import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    loss_normalizer,
    truncated_importance_weights,
)
from trainers.rl.generation import create_backend
from trainers.rl.learning_signal import LearningSignal
from trainers.rl.online import (
    completion_stats,
    forward_groups,
    frozen_logprobs,
    reuses_sampling_logprobs,
    rollout_prompts,
    sampling_generator,
    select_rows,
)
from trainers.rl.ptx import PtxData, backward_ptx_loss
from trainers.rl.response_logprobs import response_logits
from trainers.rl.rewards import RewardComputer, RewardScores
from trainers.rl.rollout import Rollout
from trainers.rl.samples import report_samples
from trainers.rl.shares import evaluate_policy, sample_and_score
from trainers.run_setup import announce_model, prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import PPOHyperparameters, PPOJob
from trainers.spec.results import RunResult, TrainingData
from trainers.spec.rewards import model_checkpoints
from trainers.token_count import TokenCount, sequence_tokens

# What `accumulate_gradients` reports for each optimizer step, in order (with `TIS_METRICS` when tis_cap is set).
STEP_METRICS = ("train/loss", "policy/pg_loss", "policy/clipfrac", "policy/approx_kl", "policy/entropy",
                "val/vf_loss", "val/clipfrac")  # fmt: skip
TIS_METRICS = ("policy/tis_weight_mean", "policy/tis_clipfrac")
OLD_FROM_SAMPLING = ("log π_old is taken from the sampling pass (the hf backend in fp32 samples with the training "
                     "model itself), as TRL does: one gradient-free forward pass fewer per rollout")  # fmt: skip


@dataclass
class PPOBatch:
    """A rollout with what the clipped updates need.

    Attributes:
        rollout: B prompts and their sampled responses.
        old_logprobs: (B, A) log π_old of the response tokens, 0 on padding.
        old_values: (B, A) V_old, the critic's values at rollout time, 0 on padding.
        advantages: (B, A) GAE advantages (whitened when asked), 0 on padding.
        returns: (B, A) value targets ``G = A + V_old`` (before whitening), 0 on padding.
    """

    rollout: Rollout
    old_logprobs: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor

    def select(self, rows: Sequence[int]) -> PPOBatch:
        """The batch restricted to some rows (padding columns trimmed, see `select_rows`)."""
        rollout = select_rows(self.rollout, rows)
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.advantages.device)
        width = rollout.response_ids.shape[1]
        return PPOBatch(rollout, *(t[index, :width] for t in (self.old_logprobs, self.old_values,
                                                               self.advantages, self.returns)))  # fmt: skip


def train_ppo(
    job: PPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with PPO on prompt rows, rewarded by the job's reward spec.

    1. Set up the run (`prepare_run`): the policy, π_ref, the tokenised prompts; then the reward,
       the critic, the ptx text, the KL controller and the training loop (`TrainingLoop`, with the
       critic as its auxiliary model). Rollout after rollout:
    2. stop when asked, between rollouts;
    3. rollout: one completion for each of the rollout's prompts;
    4. rewards (a stop request while sampling or grading drops the rollout), π_old, π_ref, V_old,
       and the KL-penalised per-token rewards;
    5. GAE advantages and returns;
    6. clipped updates: one optimizer step per shuffled minibatch (with the ptx loss when asked),
       each step's metrics logged when due, and
    7. the rollout's last step evaluated when one of its steps fell due;
    8. the KL controller's update, a few of the rollout's completions reported (`Callbacks.on_samples`)
       when one of its steps was logged, and a checkpoint after the rollout when one of its steps fell due.

    Args:
        job: the PPO job spec.
        data: canonical prompt rows (train; optional eval, whose mean reward is reported as
            ``eval/reward/mean`` with one completion per prompt, as GRPO does), and with
            ``ptx_coef > 0`` the text rows of the language-modelling loss (`TrainingData.ptx`,
            see `trainers.rl.ptx`).
        callbacks: where metrics, checkpoints and events go; asked whether to stop.
        resume_from: a PPO checkpoint directory to continue from (policy, critic, KL coefficient).

    Returns:
        The run's `RunResult`. Errors are `trainers.run`'s, a non-finite critic gradient norm included.
    """
    hp = job.hyperparameters

    # 1. The policy (fresh adapters for LoRA, or the checkpoint's), the frozen reference and the
    #    prompts (`prepare_run`); the reward; the critic (from the policy's base or the reward model,
    #    or the checkpoint's); the text of the ptx loss; the KL coefficient; optimisers (the
    #    critic's beside the policy's), step and RNG, restored when resuming.
    run = prepare_run(job, data, callbacks, resume_from=resume_from, reference="during_training", announce=False)
    policy, reference, tokenizer, device, ranks = run.model, run.reference, run.tokenizer, run.device, run.ranks
    # Train mode only for dropout, and for gradient checkpointing, which applies in train mode only
    # (dropout is off either way when disabled); frozen passes switch to eval.
    train_mode = not hp.disable_dropout or run.compute.gradient_checkpointing
    policy.train(train_mode)
    micro_size = run.micro_batch_size  # rows per forward
    rewarder = RewardComputer.from_job(job, policy_tokenizer=tokenizer, device=device, on_event=callbacks.on_event,
                                       batch_size=micro_size, compute=run.compute)  # fmt: skip
    checkpoints = model_checkpoints(job.reward)
    fp32_reference = not isinstance(reference, PeftModel) and reference.dtype == torch.float32
    initial = functools.partial(
        initial_critic, hp.value_model, tokenizer=tokenizer,
        policy_base=lambda: reference if fp32_reference else load_policy(job.base_model)[0],
        reward_model_dir=job.reward_model_dirs.get(checkpoints[0]) if checkpoints else None,
        policy_rows=policy.get_input_embeddings().weight.shape[0],
    )  # fmt: skip
    critic_dir = Path(resume_from) / CRITIC_DIR if resume_from is not None else None
    critic = run.compute.prepare_trained(trainable_critic(initial, job.lora, resume_dir=critic_dir)).to(device)
    if hp.disable_dropout:
        disable_dropout(critic)
    critic = run.parallelize(critic)  # before the loop's optimizer takes its parameters
    critic.train(train_mode)
    announce_model(callbacks, f"{job.base_model} and its critic", [policy, critic], device, run.compute)
    order = PromptOrder(num_rows=len(run.train), rollout_batch_size=hp.rollout_batch_size, seed=job.seed)
    ptx = None
    if hp.ptx_coef > 0:
        ptx = PtxData.from_rows(data.ptx or [], tokenizer, max_length=hp.max_length, batch_size=hp.batch_size,
                                seed=job.seed)  # fmt: skip
    kl_controller = (
        AdaptiveKLController(hp.kl_coef, hp.target_kl, hp.kl_horizon) if hp.adaptive_kl
        else FixedKLController(hp.kl_coef)
    )  # fmt: skip
    steps_per_rollout = hp.ppo_epochs * hp.num_minibatches
    tokens = TokenCount()  # the tokens trained on, ``train/num_tokens``: sampled, so checkpoints keep the count
    loop = run.training_loop(
        order.rollouts_per_epoch * steps_per_rollout,
        auxiliary=AuxiliaryModel(CRITIC_DIR, critic, hp.critic_learning_rate, functools.partial(save_critic, critic)),
        extra_state=lambda: {"kl_controller": kl_controller.state_dict()} | tokens.state_dict(),
    )
    if run.resumed:  # the loop has checked that this is a PPO checkpoint
        kl_controller.load_state_dict(run.state["extra"]["kl_controller"])
        tokens.load_state_dict(run.state["extra"])
    signal = LearningSignal(job.reward, callbacks.on_event)
    metrics: dict[str, float] = {}
    backend = create_backend(policy, tokenizer, compute=run.compute, hp=hp, ranks=ranks, base_model=job.base_model)
    backend.plan(rollouts=-(-(loop.total_steps - loop.step) // steps_per_rollout))
    run.callbacks.on_event("info", backend.describe())
    old_from_sampling = not hp.recompute_old_logprobs and reuses_sampling_logprobs(backend, run.compute)
    if old_from_sampling:
        run.callbacks.on_event("info", OLD_FROM_SAMPLING)

    with run.autocast(), backend:  # every forward pass below (sampling too) runs in the job's precision
        while loop.step < loop.total_steps:
            # 2. Cooperative stop, between rollouts: a checkpoint never splits one.
            if loop.stop_requested():
                return loop.stop(metrics)

            # 3. Rollout: one completion for each of the rollout's prompts (each rank samples its share,
            #    then all hold the whole rollout).
            number, rows = rollout_prompts(order, run.train, step=loop.step, steps_per_rollout=steps_per_rollout)
            with backend.awake():
                sampled = sample_and_score(backend, rows, tokenizer, rewarder, hp, seed=job.seed,
                                           rollout_number=number, group_size=1, ranks=ranks, callbacks=run.callbacks,
                                           should_stop=loop.stop_requested)  # fmt: skip

            # 4. Rewards and KL: the score at the last token, unless a stop is requested first (the
            #    rollout is then dropped); a KL penalty on every token.
            if sampled is None:
                return loop.stop(metrics)
            rollout, scores = sampled
            signal.observe(scores)  # a grader erring on every completion for 3 rollouts fails the run
            mask = rollout.response_mask  # (B, A)
            score = scores.rewards if hp.reward_clip is None else scores.rewards.clamp(-hp.reward_clip, hp.reward_clip)
            old_logprobs = (rollout.logprobs if old_from_sampling
                            else frozen_logprobs(policy, rollout, hp.temperature, batch_size=micro_size, ranks=ranks))
            ref_logprobs = frozen_logprobs(
                reference, rollout, hp.temperature, batch_size=micro_size, reference=True, ranks=ranks
            )  # (B, A) fmt: skip
            old_values = rollout_values(critic.eval(), rollout, batch_size=micro_size, ranks=ranks)  # (B, A) as π_old
            critic.train(train_mode)
            beta = kl_controller.value
            rewards, kl = kl_penalized_rewards(score, old_logprobs, ref_logprobs, mask, beta)  # (B, A) each

            # 5. Advantages: GAE over each response, returns as value targets, whitened advantages.
            advantages, returns = gae(rewards, old_values, mask, hp.gamma, hp.lam)  # (B, A) each
            if hp.whiten_advantages and int(mask.sum()) > 1:
                advantages = whiten(advantages, mask)
            batch = PPOBatch(rollout, old_logprobs, old_values, advantages, returns)
            rollout_stats = rollout_statistics(scores, score, kl, beta, old_values, returns, rollout)

            # 6. Clipped updates: `ppo_epochs` passes over shuffled minibatches, one optimizer step each
            #    (fewer when the run ends first); PPO-ptx adds the language-modelling loss to each step's
            #    gradients and loss.
            schedule, generator = [], sampling_generator(job.seed, number, device)  # the same order on every rank
            for _ in range(hp.ppo_epochs):
                permutation = torch.randperm(len(rows), generator=generator, device=generator.device).tolist()
                schedule += [permutation[i : i + hp.batch_size] for i in range(0, len(rows), hp.batch_size)]
            schedule = schedule[: loop.total_steps - loop.step]
            first, last = loop.step, loop.step + len(schedule)  # the steps before and at the rollout's end
            lengths = sequence_tokens(rollout)  # (B,) what the policy's training forwards read of each sequence
            for minibatch in schedule:
                step = loop.next_step()
                stats = accumulate_gradients(policy, critic, batch.select(minibatch), hp, backward=loop.backward,
                                             ranks=ranks)  # fmt: skip
                names = STEP_METRICS + (TIS_METRICS if hp.tis_cap is not None else ())  # of the (S,) stats
                step_tokens = sum(lengths[i] for i in minibatch)
                if ptx is not None:
                    ptx_rows = ptx.step_rows(step)
                    step_tokens += sum(map(len, ptx_rows))  # the text rows are read by the same policy
                    ptx_loss = backward_ptx_loss(policy, ptx_rows, coef=hp.ptx_coef,
                                                 pad_token_id=ptx.pad_token_id,
                                                 gradient_accumulation_steps=hp.gradient_accumulation_steps,
                                                 backward=loop.backward, ranks=ranks)  # fmt: skip
                    stats = torch.cat([stats[:1] + hp.ptx_coef * ptx_loss, stats[1:], ptx_loss.reshape(1)])  # (S+1,)
                    names = (*names, "ptx/loss")
                metrics = loop.update(stats, names) | rollout_stats | tokens.add(step_tokens)
                backend.sync_weights(policy)

                # 7. Evaluation at the rollout's last step, when one of its steps fell due; metrics
                #    reported when logging falls due and with every evaluation.
                evaluated = bool(run.eval) and loop.step == last and loop.eval_due(since=first)
                if evaluated:
                    with backend.awake():
                        metrics |= evaluate_policy(backend, run.eval, tokenizer, rewarder, hp, seed=job.seed,
                                                   ranks=ranks)  # fmt: skip
                loop.log(metrics, evaluated=evaluated)

            # 8. The KL controller sees the rollout's KL (its coefficient is saved with the checkpoint); a few
            #    of the rollout's completions with their scores, when one of its steps was logged; a
            #    checkpoint after the rollout, when one of its steps fell due.
            kl_controller.update(rollout_stats["objective/kl"], n_steps=len(rows))
            if loop.log_due(since=first):
                report_samples(run.callbacks, loop.step, tokenizer, rollout, score, count=hp.log_samples,
                               per_grader=scores.per_grader, extras={"kl": kl.sum(dim=1)})  # fmt: skip
            if loop.checkpoint_due(since=first):
                loop.checkpoint(metrics)

        return loop.finish(metrics)


def accumulate_gradients(
    policy: nn.Module,
    critic: nn.Module,
    batch: PPOBatch,
    hp: PPOHyperparameters,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    ranks: Ranks | None = None,
) -> Tensor:
    """Backward the PPO loss of one optimizer step (one minibatch), micro-batch by micro-batch.

    Per token, with ``ρ = exp(clamp(log π − log π_old))``:
    ``ℓ = −w·min(ρA, clip(ρ, 1 − ε, 1 + ε)A) + vf_coef·½·max((V − G)², (V_old + clip(V − V_old, ±ε_v) − G)²)
    − entropy_coef·H(π)``, w the truncated importance weight with ``tis_cap`` (else 1), summed over the
    step's response tokens and divided by their number (`trainers.ops.policy_losses`, "token"
    aggregation), so the micro-batch losses add up to the step's
    loss and the accumulated gradients of policy and critic do not depend on
    `gradient_accumulation_steps`. On several ranks each runs its share of every pass
    (`Ranks.batch_share`), still divided by the step's global token count.

    Args:
        policy: the policy being trained; gradients accumulate into its parameters.
        critic: the critic being trained; gradients accumulate into its parameters.
        batch: the step's completions (one minibatch of a rollout).
        hp: supplies the clip ranges, coefficients, temperature and micro-batch count.
        backward: runs a loss's backward pass (`TrainingLoop.backward`, which scales it under fp16,
            and by the world size on several ranks).
        ranks: the job's processes (default: one).

    Returns:
        (S,) the step's statistics in `STEP_METRICS` order, on the device (on several ranks, this
        rank's share of each, which `TrainingLoop.update` sums): the loss, the policy
        loss, the share of tokens whose clipped term was chosen, the k3 estimate of KL(π_old ‖ π),
        the mean entropy per token, the value loss and the share of tokens whose clipped value
        error was the larger; with ``tis_cap``, the mean truncated importance weight and the share
        of tokens it capped (`TIS_METRICS`); per-token means over the whole step.
    """
    mask = batch.rollout.response_mask  # (B, A)
    num_tokens = mask.sum().float()
    normalizer = loss_normalizer("token", num_tokens=num_tokens, num_sequences=mask.shape[0])
    sums = torch.zeros(len(STEP_METRICS) + (len(TIS_METRICS) if hp.tis_cap is not None else 0),
                       device=mask.device)  # (S,) fmt: skip
    micro_batches = split_micro_batches(list(range(mask.shape[0])), hp.gradient_accumulation_steps)
    ranks = ranks or Ranks()
    for rows in [part for micro in micro_batches for part in forward_groups(batch.rollout, micro, len(micro))]:
        mine, weight = ranks.batch_share(rows)  # every rank holds the whole minibatch: the same passes on each
        micro = batch.select(mine)
        m = micro.rollout.response_mask  # (b, a)
        logits = response_logits(policy, micro.rollout, hp.temperature)  # (b, a, V)
        logp = selective_log_softmax(logits, micro.rollout.response_ids) * m  # (b, a)
        tis = None
        if hp.tis_cap is not None:  # the engine's sampling probabilities against the trainer's π_old
            tis = truncated_importance_weights(micro.old_logprobs, micro.rollout.logprobs, m, hp.tis_cap)
        policy_loss = clipped_policy_loss(
            logp, micro.old_logprobs, micro.advantages, m, eps_low=hp.cliprange, eps_high=hp.cliprange,
            aggregation="token", normalizer=normalizer, token_weights=None if tis is None else tis.weights,
        )  # fmt: skip
        value_loss = clipped_value_loss(
            response_values(critic, micro.rollout), micro.old_values, micro.returns, m, eps_v=hp.cliprange_value,
            aggregation="token", normalizer=normalizer,
        )  # fmt: skip
        entropy = entropy_from_logits(logits if hp.entropy_coef > 0 else logits.detach())  # (b, a)
        entropy_loss = aggregate(entropy, m, "token", normalizer=normalizer)
        loss = policy_loss.loss + hp.vf_coef * value_loss.loss - hp.entropy_coef * entropy_loss
        backward(weight * loss)
        share = m.sum() / num_tokens  # the micro-batch's share of the step's tokens
        step_stats = [
            loss.detach(), policy_loss.loss.detach(), policy_loss.clip_frac * share, policy_loss.approx_kl * share,
            entropy_loss.detach(), value_loss.loss.detach(), value_loss.clip_frac * share,
        ]  # fmt: skip
        if tis is not None:
            step_stats += [tis.mean * share, tis.clip_frac * share]
        sums += weight * torch.stack(step_stats)
    return sums


def rollout_statistics(
    scores: RewardScores, score: Tensor, kl: Tensor, beta: float, values: Tensor, returns: Tensor, rollout: Rollout
) -> dict[str, float]:
    """The rollout's objective, value and completion statistics, as host floats.

    ``objective/scores`` is the mean score as optimised (missing-EOS penalty and `reward_clip`
    applied; ``reward/<grader>`` are the graders' own scores); ``objective/kl`` the mean over
    completions of the summed per-token k1 KL (nats); ``objective/rlhf_reward`` =
    ``objective/scores`` + ``objective/non_score_reward`` (−β·KL), the quantity PPO maximises.
    ``val/explained_variance`` (of the returns by V_old) is left out when the returns are constant.
    """
    kl_sum = kl.sum(dim=1)  # (B,)
    stats = {
        "objective/kl": kl_sum.mean(),
        "objective/scores": score.mean(),
        "objective/non_score_reward": -beta * kl_sum.mean(),
        "objective/rlhf_reward": (score - beta * kl_sum).mean(),
        "val/explained_variance": explained_variance(values, returns, rollout.response_mask),
        **completion_stats(rollout),
    }  # on the device: read in one synchronisation
    metrics = dict(zip(stats, torch.stack([v.float() for v in stats.values()]).tolist(), strict=True))
    metrics |= {f"reward/{name}": grades.mean().item() for name, grades in scores.per_grader.items()}  # on the CPU
    metrics |= {"objective/kl_coef": beta, "reward/error_fraction": scores.rows_with_errors / len(score)}
    if not math.isfinite(metrics["val/explained_variance"]):
        del metrics["val/explained_variance"]
    return metrics
