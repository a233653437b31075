"""The GRPO, RLOO and PPO runs of `bench/trainers_vs_trl.py`: ours and TRL's, each in its own process.

Shared with the DPO and reward-model runs there: `StepClock`, `memory`, `LEARNING_RATE`, `LOG_EVERY`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MAX_LENGTH, MAX_PROMPT_LENGTH, forward_flops, peak_rss_mib
from bench.step_split import install as install_split

LEARNING_RATE = {"dpo": 5e-4, "reward_model": 3e-4, "grpo": 1e-3, "rloo": 1e-3, "ppo": 1e-4}
# GRPO: 4 prompts × G = 4 completions of at most 32 new tokens per optimizer step (one step per
# rollout, μ = 1), β = 0.04 against the initial policy, token-level aggregation (TRL's "dapo"),
# advantages scaled by the group's std. The reward: 1 when the completion contains the row's answer.
GRPO = {"prompts": 4, "generations": 4, "new_tokens": 32, "beta": 0.04}
GRPO_REWARD = {"type": "string_check", "name": "answer", "operation": "contains", "reference": "{{item.answer}}"}
# RLOO: GRPO's setting with our advantage_estimator "rloo" against TRL's RLOOTrainer: leave-one-out
# baselines, β = 0.04 as a KL penalty in the reward, no advantage normalisation. TRL's loss is one ratio
# per completion averaged over completions; on policy its gradient is ours with the "constant"
# aggregation over 1 token (bench/parity_variants.py checks both to 1e-5).
RLOO_OPTIONS = {"advantage_estimator": "rloo", "loss_aggregation": "constant", "max_completion_tokens_constant": 1}
# PPO: 16 prompts per rollout, one completion each of at most 32 new tokens, 2 minibatches of 8 and
# 4 epochs (8 optimizer steps per rollout), KL coefficient 0.05, ε = ε_v = 0.2, γ = 1, λ = 0.95; the
# reward is the benchmark reward model's raw score, and the critic starts from that reward model.
# TRL ships no PPO trainer since 1.13: the newest that does (1.12, trl.experimental.ppo) runs from
# its own virtualenv, made by `bench/trainers_vs_trl.py --setup-ppo-venv`.
PPO = {"prompts": 16, "minibatch": 8, "epochs": 4, "new_tokens": 32, "kl_coef": 0.05}
LOG_EVERY = 10  # TRL's logging cadence; its logged loss is the mean over these steps


class StepClock:
    """Timestamps of the ends of optimizer steps (wall clock and this process's CPU time), and the real tokens of each.

    CPU time (`time.process_time`, all the process's threads) is what the step's work took, less
    the time other processes held the core; on a shared machine it moves less than wall time.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.flops: list[float] = []

    def mark(self) -> None:
        """The end of a step."""
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def rates(self, warmup: int, batch_size: int) -> dict[str, float]:
        """Samples/s, tokens/s and FLOP/s over the steps after the first `warmup` ones; samples per CPU second."""
        elapsed = self.times[-1] - self.times[warmup - 1]
        steps = len(self.times) - warmup
        cpu = {}
        if len(self.cpu) == len(self.times):
            cpu = {"samples_per_cpu_s": steps * batch_size / (self.cpu[-1] - self.cpu[warmup - 1])}
        return cpu | {
            "samples_per_s": steps * batch_size / elapsed,
            "tokens_per_s": sum(self.tokens[warmup:]) / elapsed,
            "flops_per_s": sum(self.flops[warmup:]) / elapsed,
            "measured_steps": steps,
            "train_s": self.times[-1] - self.times[0],
        }

    def run_figures(self, start: float, batch_size: int) -> dict[str, float]:
        """Setup (from `start` to the end of step 1) and samples/s over the whole run, setup included."""
        return {"setup_s": self.times[0] - start,
                "e2e_samples_per_s": len(self.times) * batch_size / (self.times[-1] - start)}  # fmt: skip



def run_ours_grpo(
    work: Path, seed: int, steps: int, warmup: int, device: str = "cpu", algo: str = "grpo", split: bool = False,
    compile_generation: bool | None = None, probe: Any = None, setting: dict[str, Any] | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train GRPO (or its RLOO estimator) with our library through `trainers.run`, timing each step.

    With `split`, also the time of each phase of a step (`bench.step_split`), as ``split_ms``;
    `compile_generation` is the hyperparameter (None: the library's rule, which the default run size leaves eager).
    `probe`, in place of the split: any object with the phase clock's ``reset()`` (called at the end of
    warm-up) and ``per_step(steps)`` (after each later step), such as `bench.op_profile.OpProfile`.
    `setting` replaces keys of `GRPO` (prompts, generations, new_tokens); `hyperparameters` are added
    to the job's (bench/gpu.py's rollout engines: ``generation_backend``, ``compile_generation``).
    """
    from transformers import AutoConfig

    import trainers

    phases = probe or (install_split(algo) if split else None)

    rows = json.loads((work / "prompts.json").read_text())
    model_dir = work / "policy"
    config = AutoConfig.from_pretrained(model_dir)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    grpo = GRPO | (setting or {})
    completions = grpo["prompts"] * grpo["generations"]
    clock, rewards = StepClock(), {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            clock.mark()
            completion = metrics["completions/mean_length"]
            clock.tokens.append(round(completions * (prompt_tokens + completion)))
            clock.flops.append(_grpo_step_flops(config, prompt_tokens, completion, completions))
            rewards[step] = metrics["reward/mean"]
            _split_tick(phases, clock, warmup, result)

    job = trainers.GRPOJob(
        base_model=str(model_dir), seed=seed, reward=GRPO_REWARD,
        hyperparameters={
            "learning_rate": LEARNING_RATE["grpo"], "batch_size": completions, "rollout_batch_size": grpo["prompts"],
            "num_generations": grpo["generations"], "max_new_tokens": grpo["new_tokens"], "beta": grpo["beta"],
            "max_length": _max_length(grpo), "max_prompt_length": MAX_PROMPT_LENGTH, "max_steps": steps,
            "checkpoint_every": 10**6, "loss_aggregation": "token", "scale_rewards": True,
        } | _compile_option(compile_generation) | (RLOO_OPTIONS if algo == "rloo" else {}) | (hyperparameters or {}),
    )  # fmt: skip
    start, result = time.perf_counter(), {}
    trainers.run(job, trainers.TrainingData(train=[{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
                 Timing())  # fmt: skip
    result |= clock.rates(warmup, completions) | memory(device) | clock.run_figures(start, completions)
    last = sorted(rewards)[-LOG_EVERY:]
    result["final"] = {"train_reward_last10": statistics.fmean(rewards[s] for s in last)}
    return result


def run_trl_grpo(
    work: Path, seed: int, steps: int, warmup: int, device: str = "cpu", algo: str = "grpo",
    setting: dict[str, Any] | None = None, trl_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train with TRL's `GRPOTrainer` (`RLOOTrainer` for RLOO) in the same setting, timing each step.

    `setting` as for `run_ours_grpo`; `trl_options` are added to TRL's config (``use_vllm`` …).
    """
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    rows = json.loads((work / "prompts.json").read_text())
    model_dir = work / "policy"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    grpo = GRPO | (setting or {})
    completions = grpo["prompts"] * grpo["generations"]
    clock, pending = StepClock(), []

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()
            completion = statistics.fmean(pending)
            clock.tokens.append(round(completions * (prompt_tokens + completion)))
            clock.flops.append(_grpo_step_flops(model.config, prompt_tokens, completion, completions))
            pending.clear()

    class TimedGRPO(trl.RLOOTrainer if algo == "rloo" else trl.GRPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            output = super().training_step(model, inputs, *args, **kwargs)  # generates, then trains
            pending.extend(self._last_completion_lengths)
            return output

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self._last_completion_lengths = out["completion_mask"].sum(dim=1).tolist()
            return out

    def answer_reward(completions, answer, **kwargs):
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer, strict=True)]

    variant = {"normalize_advantages": False} if algo == "rloo" else {"loss_type": "dapo", "scale_rewards": "group"}
    args = (trl.RLOOConfig if algo == "rloo" else trl.GRPOConfig)(
        output_dir=tempfile.mkdtemp(dir=work, prefix=f"trl-{algo}-{seed}-"), per_device_train_batch_size=completions,
        num_generations=grpo["generations"], max_completion_length=grpo["new_tokens"], beta=grpo["beta"],
        epsilon=0.2, num_iterations=1, temperature=1.0, top_p=1.0, **variant,
        learning_rate=LEARNING_RATE["grpo"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=steps, bf16=device == "cuda", fp16=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, use_cpu=device == "cpu",
        log_completions=False, **(trl_options or {}),
    )  # fmt: skip
    start = time.perf_counter()
    trainer = TimedGRPO(model=model, reward_funcs=answer_reward, args=args, processing_class=tokenizer,
                        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
                        callbacks=[Timing()])  # fmt: skip
    trainer.train()
    result = clock.rates(warmup, completions) | memory(device) | clock.run_figures(start, completions)
    logged = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    result["final"] = {"train_reward_last10": statistics.fmean(logged[-LOG_EVERY:])}
    result["trl_version"] = trl.__version__
    return result


def _max_length(grpo: dict[str, Any]) -> int:
    """The benchmark's longest prompt + response, longer where the completions need it."""
    return max(MAX_LENGTH, MAX_PROMPT_LENGTH + grpo["new_tokens"])


def _compile_option(compile_generation: bool | None) -> dict[str, bool]:
    """The ``compile_generation`` hyperparameter when one is asked for (a checkout before it has none)."""
    return {} if compile_generation is None else {"compile_generation": compile_generation}


def _split_tick(phases, clock: StepClock, warmup: int, result: dict[str, Any]) -> None:
    """At the end of a timed step: restart the phase clock after warm-up, then keep its split per step."""
    if phases is None:
        return
    if len(clock.times) == warmup:
        phases.reset()
    elif len(clock.times) > warmup:
        result["split_ms"] = phases.per_step(len(clock.times) - warmup)


def memory(device: str) -> dict[str, float]:
    """Peak RSS of this process, and on CUDA the peak memory torch allocated on the device (MiB)."""
    out = {"peak_rss_mib": peak_rss_mib()}
    if device == "cuda":
        import torch

        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_ours_ppo(
    work: Path, seed: int, steps: int, warmup: int, device: str = "cpu", split: bool = False,
    compile_generation: bool | None = None, probe: Any = None,
) -> dict[str, Any]:
    """Train PPO with our library; a "step" here is one rollout and its 8 optimizer steps (options: as GRPO's)."""
    from transformers import AutoConfig

    import trainers

    phases = probe or (install_split("ppo") if split else None)

    rows = json.loads((work / "prompts.json").read_text())
    model_dir = work / "policy"
    config = AutoConfig.from_pretrained(model_dir)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    per_rollout = PPO["epochs"] * PPO["prompts"] // PPO["minibatch"]  # optimizer steps
    clock, scores = StepClock(), {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            if step % per_rollout:
                return
            clock.mark()
            clock.tokens.append(round(PPO["prompts"] * (prompt_tokens + PPO["new_tokens"])))
            clock.flops.append(_ppo_rollout_flops(config, prompt_tokens))
            scores[step] = metrics["objective/scores"]
            _split_tick(phases, clock, warmup, result)

    job = trainers.PPOJob(
        base_model=str(model_dir), seed=seed,
        reward={"type": "model", "name": "rm", "checkpoint_id": "rm", "normalize": False},
        reward_model_dirs={"rm": str(work / "reward_model")},
        hyperparameters={
            "learning_rate": LEARNING_RATE["ppo"], "critic_learning_rate": LEARNING_RATE["ppo"],
            "batch_size": PPO["minibatch"], "rollout_batch_size": PPO["prompts"], "ppo_epochs": PPO["epochs"],
            "max_new_tokens": PPO["new_tokens"], "kl_coef": PPO["kl_coef"], "cliprange": 0.2, "cliprange_value": 0.2,
            "gamma": 1.0, "lam": 0.95, "value_model": "reward_model", "max_length": MAX_LENGTH,
            "max_prompt_length": MAX_PROMPT_LENGTH, "max_steps": steps * per_rollout, "checkpoint_every": 10**6,
        } | _compile_option(compile_generation),
    )  # fmt: skip
    start, result = time.perf_counter(), {}
    trainers.run(job, trainers.TrainingData(train=[{"prompt": r["prompt"]} for r in rows]), Timing())
    result |= clock.rates(warmup, PPO["prompts"]) | memory(device) | clock.run_figures(start, PPO["prompts"])
    last = sorted(scores)[-LOG_EVERY:]
    result["final"] = {"score_last10": statistics.fmean(scores[s] for s in last)}
    return result


def run_trl_ppo(work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train PPO with TRL 1.12's `trl.experimental.ppo.PPOTrainer` (from its own virtualenv)."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = json.loads((work / "prompts.json").read_text())
    model_dir, reward_dir = work / "policy", work / "reward_model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    clock = StepClock()
    dataset = Dataset.from_list([{"input_ids": tokenizer(r["prompt"])["input_ids"]} for r in rows])

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()
            clock.tokens.append(round(PPO["prompts"] * (prompt_tokens + PPO["new_tokens"])))
            clock.flops.append(_ppo_rollout_flops(policy.config, prompt_tokens))

    args = PPOConfig(
        output_dir=tempfile.mkdtemp(dir=work, prefix=f"trl-ppo-{seed}-"), per_device_train_batch_size=PPO["prompts"],
        gradient_accumulation_steps=1, num_mini_batches=PPO["prompts"] // PPO["minibatch"],  # TRL: a rollout, split
        num_ppo_epochs=PPO["epochs"], total_episodes=steps * PPO["prompts"], response_length=PPO["new_tokens"],
        kl_coef=PPO["kl_coef"], cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
        temperature=1.0, stop_token="eos", missing_eos_penalty=None, learning_rate=LEARNING_RATE["ppo"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=device == "cuda",
        fp16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=seed, use_cpu=device == "cpu", num_sample_generations=0,
        local_rollout_forward_batch_size=PPO["prompts"],
    )  # fmt: skip
    start = time.perf_counter()
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference, reward_model=reward,
                         value_model=value, train_dataset=dataset, callbacks=[Timing()])  # fmt: skip
    trainer.train()
    logged = [e for e in trainer.state.log_history if "objective/scores" in e]
    result = clock.rates(warmup, PPO["prompts"]) | memory(device) | clock.run_figures(start, PPO["prompts"])
    result["final"] = {"score_last10": statistics.fmean(e["objective/scores"] for e in logged[-LOG_EVERY:])}
    result["trl_version"] = trl.__version__
    return result


def _ppo_rollout_flops(config, prompt_tokens: float) -> float:
    """Model FLOPs of one PPO rollout and its updates, counting each pass over the rollout's sequences.

    Sampling (≈ one forward), the rollout policy, reference, reward and value passes (4 forwards),
    then per epoch a policy and a value forward and backward (2 × 3 forwards). TRL does not log
    completion lengths, so for both trainers a sequence counts as its prompt plus `new_tokens`.
    """
    length = round(prompt_tokens + PPO["new_tokens"])
    return (5 + 6 * PPO["epochs"]) * forward_flops(config, [length] * PPO["prompts"])


def _grpo_step_flops(config, prompt_tokens: float, completion_tokens: float, completions: int) -> float:
    """Model FLOPs of one GRPO step: sampling (≈ one forward), the reference pass, forward + backward."""
    length = round(prompt_tokens + completion_tokens)
    return 5 * forward_flops(config, [length] * completions)
