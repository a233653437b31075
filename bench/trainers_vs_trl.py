"""Our trainers against Hugging Face TRL's on the same model, data, hyperparameters and machine, in one run.

    .venv/bin/python bench/trainers_vs_trl.py --algo dpo|reward_model|grpo|rloo|ppo|all [--reps 3] [--steps 40]

Each repetition runs each trainer in its own subprocess (so peak RSS is that trainer's alone), in
alternating order (ours first on even repetitions, TRL's first on odd ones) so that load from other
processes on the machine falls on both alike. Figures are medians over the repetitions; ratios are
the medians of the per-repetition ours/TRL ratios. Repetition r uses seed r for both trainers.

Both trainers start from the same weights (`bench.common.build_models`), train on the same rows
(`bench.common.preference_rows`) for the same number of steps of 8 pairs, fp32, AdamW at a
constant learning rate, gradients clipped to norm 1. TRL runs in its fastest configuration for
this setup: reference log-probs precomputed, no gradient checkpointing, no evaluation or saving
during training, logging every 10 steps. Samples/s and tokens/s are measured over the steps after
`--warmup`; tokens are real (non-padding) tokens; FLOP/s counts the model FLOPs of those real
tokens (forward and backward, `bench.common.forward_flops`) and is also given as a fraction of
this machine's fp32 matmul rate, measured in the same run. Final metrics are computed on held-out
pairs by `bench.common`'s plain judge, not by either trainer.

Results go to ``bench/results.json`` (merged by benchmark name) and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import (  # noqa: E402
    MAX_LENGTH,
    MAX_PROMPT_LENGTH,
    build_models,
    dpo_judge,
    forward_flops,
    machine,
    measure_matmul_rate,
    peak_rss_mib,
    preference_rows,
    prompt_rows,
    reward_judge,
    tokenize_rows,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
BATCH_SIZE = 8
BETA = 0.1
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
# its own virtualenv, PPO_VENV, made by `--setup-ppo-venv`.
PPO = {"prompts": 16, "minibatch": 8, "epochs": 4, "new_tokens": 32, "kl_coef": 0.05}
PPO_TRL_VERSION = "1.12.0"
PPO_VENV = BENCH_DIR / ".venv-trl-ppo"
EVAL_ROWS = 128
LOG_EVERY = 10  # TRL's logging cadence; its logged loss is the mean over these steps


# --- children: one trainer, one run --------------------------------------------------------------


class StepClock:
    """Timestamps of the ends of optimizer steps, and the real tokens of each step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.flops: list[float] = []

    def rates(self, warmup: int, batch_size: int) -> dict[str, float]:
        """Samples/s, tokens/s and FLOP/s over the steps after the first `warmup` ones."""
        elapsed = self.times[-1] - self.times[warmup - 1]
        steps = len(self.times) - warmup
        return {
            "samples_per_s": steps * batch_size / elapsed,
            "tokens_per_s": sum(self.tokens[warmup:]) / elapsed,
            "flops_per_s": sum(self.flops[warmup:]) / elapsed,
            "measured_steps": steps,
            "train_s": self.times[-1] - self.times[0],
        }


def _step_cost(config, lengths: list[int], algo: str) -> tuple[int, float]:
    """Real tokens and training FLOPs (forward + backward = 3 forwards) of one step's rows."""
    return sum(lengths), 3 * forward_flops(config, lengths, head=algo == "dpo")


def run_ours(algo: str, work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train with our library through `trainers.run`, timing each step from its metrics callback."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import trainers
    from trainers.data.batching import BatchOrder

    rows = json.loads((work / "train.json").read_text())[: steps * BATCH_SIZE]
    eval_rows = json.loads((work / "eval.json").read_text())
    model_dir = work / ("policy" if algo == "dpo" else "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [(len(p) + len(c), len(p) + len(r)) for p, c, r in tokenize_rows(rows, tokenizer)]
    config = AutoModelForCausalLM.from_pretrained(model_dir).config if algo == "dpo" else None
    config = config or AutoModelForSequenceClassification.from_pretrained(model_dir).config
    order = BatchOrder(num_rows=len(rows), batch_size=BATCH_SIZE, seed=seed)
    clock = StepClock()
    out_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"ours-{algo}-{seed}-"))  # the final checkpoint
    losses: dict[int, float] = {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            clock.times.append(time.perf_counter())
            step_lengths = [t for i in order.step_indices(step) for t in lengths[i]]
            tokens, flops = _step_cost(config, step_lengths, algo)
            clock.tokens.append(tokens)
            clock.flops.append(flops)
            losses[step] = metrics["train/loss"]

        def on_checkpoint(self, step, save, info):
            save(out_dir)

    common = {"learning_rate": LEARNING_RATE[algo], "batch_size": BATCH_SIZE, "max_steps": steps,
              "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "checkpoint_every": 10**6}  # fmt: skip
    if algo == "dpo":
        job = trainers.DPOJob(base_model=str(model_dir), seed=seed, hyperparameters={**common, "beta": BETA})
    else:
        job = trainers.RewardModelJob(
            base_model=str(model_dir), seed=seed, hyperparameters={**common, "reward_stats_rows": 64}
        )
    start = time.perf_counter()
    trainers.run(job, trainers.TrainingData(train=rows), Timing())
    result = clock.rates(warmup, BATCH_SIZE) | _memory(device) | {"setup_s": clock.times[0] - start}
    last = sorted(losses)[-LOG_EVERY:]
    result["final"] = {"train_loss_last10": statistics.fmean(losses[s] for s in last)}
    if algo == "dpo":
        model = AutoModelForCausalLM.from_pretrained(out_dir / "model")
        result["final"] |= dpo_judge(model, model_dir, eval_rows, tokenizer, BETA)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(out_dir / "model")
        result["final"] |= reward_judge(model, eval_rows, tokenizer)
    return result


def run_ours_grpo(
    work: Path, seed: int, steps: int, warmup: int, device: str = "cpu", algo: str = "grpo"
) -> dict[str, Any]:
    """Train GRPO (or its RLOO estimator) with our library through `trainers.run`, timing each step."""
    from transformers import AutoConfig

    import trainers

    rows = json.loads((work / "prompts.json").read_text())
    model_dir = work / "policy"
    config = AutoConfig.from_pretrained(model_dir)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    completions = GRPO["prompts"] * GRPO["generations"]
    clock, rewards = StepClock(), {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            clock.times.append(time.perf_counter())
            completion = metrics["completions/mean_length"]
            clock.tokens.append(round(completions * (prompt_tokens + completion)))
            clock.flops.append(_grpo_step_flops(config, prompt_tokens, completion, completions))
            rewards[step] = metrics["reward/mean"]

    job = trainers.GRPOJob(
        base_model=str(model_dir), seed=seed, reward=GRPO_REWARD,
        hyperparameters={
            "learning_rate": LEARNING_RATE["grpo"], "batch_size": completions, "rollout_batch_size": GRPO["prompts"],
            "num_generations": GRPO["generations"], "max_new_tokens": GRPO["new_tokens"], "beta": GRPO["beta"],
            "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "max_steps": steps,
            "checkpoint_every": 10**6, "loss_aggregation": "token", "scale_rewards": True,
        } | (RLOO_OPTIONS if algo == "rloo" else {}),
    )  # fmt: skip
    start = time.perf_counter()
    trainers.run(job, trainers.TrainingData(train=[{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
                 Timing())  # fmt: skip
    result = clock.rates(warmup, completions) | _memory(device) | {"setup_s": clock.times[0] - start}
    last = sorted(rewards)[-LOG_EVERY:]
    result["final"] = {"train_reward_last10": statistics.fmean(rewards[s] for s in last)}
    return result


def run_trl_grpo(
    work: Path, seed: int, steps: int, warmup: int, device: str = "cpu", algo: str = "grpo"
) -> dict[str, Any]:
    """Train with TRL's `GRPOTrainer` (`RLOOTrainer` for RLOO) in the same setting, timing each step."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    rows = json.loads((work / "prompts.json").read_text())
    model_dir = work / "policy"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt_tokens = statistics.fmean(r["prompt_tokens"] for r in rows)
    completions = GRPO["prompts"] * GRPO["generations"]
    clock, pending = StepClock(), []

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.times.append(time.perf_counter())
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
        num_generations=GRPO["generations"], max_completion_length=GRPO["new_tokens"], beta=GRPO["beta"],
        epsilon=0.2, num_iterations=1, temperature=1.0, top_p=1.0, **variant,
        learning_rate=LEARNING_RATE["grpo"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=steps, bf16=device == "cuda", fp16=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, use_cpu=device == "cpu",
        log_completions=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = TimedGRPO(model=model, reward_funcs=answer_reward, args=args, processing_class=tokenizer,
                        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]),
                        callbacks=[Timing()])  # fmt: skip
    trainer.train()
    result = clock.rates(warmup, completions) | _memory(device) | {"setup_s": clock.times[0] - start}
    logged = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    result["final"] = {"train_reward_last10": statistics.fmean(logged[-LOG_EVERY:])}
    result["trl_version"] = trl.__version__
    return result


def _memory(device: str) -> dict[str, float]:
    """Peak RSS of this process, and on CUDA the peak memory torch allocated on the device (MiB)."""
    out = {"peak_rss_mib": peak_rss_mib()}
    if device == "cuda":
        import torch

        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_ours_ppo(work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train PPO with our library; a "step" here is one rollout and its 8 optimizer steps."""
    from transformers import AutoConfig

    import trainers

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
            clock.times.append(time.perf_counter())
            clock.tokens.append(round(PPO["prompts"] * (prompt_tokens + PPO["new_tokens"])))
            clock.flops.append(_ppo_rollout_flops(config, prompt_tokens))
            scores[step] = metrics["objective/scores"]

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
        },
    )  # fmt: skip
    start = time.perf_counter()
    trainers.run(job, trainers.TrainingData(train=[{"prompt": r["prompt"]} for r in rows]), Timing())
    result = clock.rates(warmup, PPO["prompts"]) | _memory(device) | {"setup_s": clock.times[0] - start}
    last = sorted(scores)[-LOG_EVERY:]
    result["final"] = {"score_last10": statistics.fmean(scores[s] for s in last)}
    return result


def run_trl_ppo(work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train PPO with TRL 1.12's `trl.experimental.ppo.PPOTrainer` (run from PPO_VENV)."""
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
            clock.times.append(time.perf_counter())
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
    result = clock.rates(warmup, PPO["prompts"]) | _memory(device) | {"setup_s": clock.times[0] - start}
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


def run_trl(algo: str, work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train with TRL's trainer in its fastest configuration here, timing each step from a callback."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    rows = json.loads((work / "train.json").read_text())[: steps * BATCH_SIZE]
    eval_rows = json.loads((work / "eval.json").read_text())
    model_dir = work / ("policy" if algo == "dpo" else "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    clock = StepClock()
    pending: list[list[int]] = []  # real lengths of the rows of the step in progress

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.times.append(time.perf_counter())
            tokens, flops = _step_cost(model.config, pending, algo)
            clock.tokens.append(tokens)
            clock.flops.append(flops)
            pending.clear()

    def record(inputs) -> None:
        pending.extend(inputs["attention_mask"].sum(dim=1).tolist())

    common = {
        "output_dir": tempfile.mkdtemp(dir=work, prefix=f"trl-{algo}-{seed}-"),
        "per_device_train_batch_size": BATCH_SIZE,
        "gradient_accumulation_steps": 1, "max_steps": steps, "learning_rate": LEARNING_RATE[algo],
        "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "max_length": MAX_LENGTH, "bf16": device == "cuda", "fp16": False, "gradient_checkpointing": False,
        "logging_steps": LOG_EVERY, "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "seed": seed, "dataloader_num_workers": 0, "use_cpu": device == "cpu",
    }  # fmt: skip
    start = time.perf_counter()
    if algo == "dpo":

        class TimedDPO(trl.DPOTrainer):
            def training_step(self, model, inputs, *args, **kwargs):
                record(inputs)
                return super().training_step(model, inputs, *args, **kwargs)

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        args = trl.DPOConfig(**common, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True)
        trainer = TimedDPO(model=model, args=args, train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, callbacks=[Timing()])  # fmt: skip
    else:

        class TimedReward(trl.RewardTrainer):
            def training_step(self, model, inputs, *args, **kwargs):
                record(inputs)
                return super().training_step(model, inputs, *args, **kwargs)

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        args = trl.RewardConfig(**common)
        trainer = TimedReward(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[Timing()])  # fmt: skip
    trainer.train()
    result = clock.rates(warmup, BATCH_SIZE) | _memory(device) | {"setup_s": clock.times[0] - start}
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result["final"] = {"train_loss_last10": logged[-1]}
    if algo == "dpo":
        result["final"] |= dpo_judge(trainer.model, model_dir, eval_rows, tokenizer, BETA)
    else:
        result["final"] |= reward_judge(trainer.model, eval_rows, tokenizer)
    result["trl_version"] = trl.__version__
    return result


# --- parent: the comparison -----------------------------------------------------------------------


def _child(
    trainer: str, algo: str, work: Path, seed: int, steps: int, warmup: int, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    script, python = Path(__file__), sys.executable
    if trainer == "trl" and algo == "ppo":
        python = str(PPO_VENV / "bin" / "python")
    if trainer.startswith("ours@"):  # our library as another checkout has it: run that checkout's copy
        script = Path(trainer.partition("@")[2]) / "bench" / script.name
    cmd = [python, str(script), "--child", trainer.partition("@")[0], "--algo", algo, "--work", str(work),
           "--seed", str(seed), "--steps", str(steps), "--warmup", str(warmup), "--device", device]  # fmt: skip
    env = os.environ | {
        "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} {algo} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(
    algo: str, work: Path, reps: int, steps: int, warmup: int, matmul_rate: float, threads: int, others: list[Path],
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Run both trainers `reps` times, alternating who goes first; return one benchmark per figure.

    `others` are further checkouts of this repository whose library runs as ``ours@<checkout>`` in
    the same rotation: a change's effect is measured side by side with TRL's and ours.
    """
    variants = [f"ours@{tree}" for tree in others]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ("ours", "trl", *variants)}
    for rep in range(reps):
        rotation = ["ours", "trl", *variants]
        rotation = rotation[rep % len(rotation) :] + rotation[: rep % len(rotation)]
        for trainer in rotation:
            result = _child(trainer, algo, work, rep, steps, warmup, threads, device)
            runs[trainer].append(result)
            print(f"  rep {rep} {trainer:>4}: {result['samples_per_s']:.2f} samples/s, "
                  f"{result['peak_rss_mib']:.0f} MiB, {json.dumps(result['final'])}", flush=True)  # fmt: skip
    figures = [
        ("samples_per_s", "samples/s", "training pairs per second after warm-up (higher is better)"),
        ("tokens_per_s", "tokens/s", "real (non-padding) tokens per second after warm-up"),
        ("flops_per_s", "FLOP/s", "model FLOPs of the real tokens per second (forward + backward)"),
        ("peak_rss_mib", "MiB", "peak resident memory of the training process (lower is better)"),
        *([("peak_gpu_mib", "MiB", "peak GPU memory allocated by torch (lower is better)")] * (device == "cuda")),
        ("setup_s", "s", "from the start of the run to the end of the first step (loading, tokenising, "
                         "reference pass)"),
    ]  # fmt: skip
    out = []
    for key, units, what in figures:
        ours = [r[key] for r in runs["ours"]]
        theirs = [r[key] for r in runs["trl"]]
        out.append({
            "name": f"{algo}/{key}", "what": what, "units": units,
            "ours": statistics.median(ours), "trl": statistics.median(theirs),
            "ratio": statistics.median(a / b for a, b in zip(ours, theirs, strict=True)),
            "ours_runs": ours, "trl_runs": theirs,
        })  # fmt: skip
    out.append({
        "name": f"{algo}/mfu", "what": "achieved model FLOP/s as a fraction of the measured fp32 matmul rate",
        "units": "fraction", "ours": statistics.median(r["flops_per_s"] for r in runs["ours"]) / matmul_rate,
        "trl": statistics.median(r["flops_per_s"] for r in runs["trl"]) / matmul_rate,
        "ratio": statistics.median(
            a["flops_per_s"] / b["flops_per_s"] for a, b in zip(runs["ours"], runs["trl"], strict=True)
        ),
        "matmul_flops_per_s": matmul_rate,
    })  # fmt: skip
    for metric in runs["ours"][0]["final"]:
        ours = [r["final"][metric] for r in runs["ours"]]
        theirs = [r["final"][metric] for r in runs["trl"]]
        out.append({
            "name": f"{algo}/final/{metric}", "what": "final metric, median over seeds (runs: one per seed)",
            "units": "", "ours": statistics.median(ours), "trl": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs) if statistics.median(theirs) else None,
            "ours_runs": ours, "trl_runs": theirs,
        })  # fmt: skip
    for variant in variants:
        for key in ("samples_per_s", "tokens_per_s", "peak_rss_mib"):
            theirs = [r[key] for r in runs["trl"]]
            values = [r[key] for r in runs[variant]]
            out.append({
                "name": f"{algo}/{key}@{_commit(Path(variant.partition('@')[2]))}", "units": "",
                "what": f"{key} of our library at another commit, same run",
                "ours": statistics.median(values), "trl": statistics.median(theirs),
                "ratio": statistics.median(a / b for a, b in zip(values, theirs, strict=True)),
                "ours_runs": values, "trl_runs": theirs,
            })  # fmt: skip
    trl_version = runs["trl"][0]["trl_version"]
    commit = _commit(BENCH_DIR.parent)
    return [entry | {"trl_version": trl_version, "ours_commit": commit} for entry in out]


def _commit(tree: Path) -> str:
    """The short commit of a checkout, with ``+`` when its working tree has changes."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "trainers"],
                           capture_output=True, text=True)  # fmt: skip
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def write_results(entries: list[dict[str, Any]], command: str, info: dict[str, Any]) -> None:
    """Merge `entries` into bench/results.json by name, each with its command and machine."""
    existing = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else []
    names = {e["name"] for e in entries}
    merged = [e for e in existing if e["name"] not in names]
    merged += [e | {"command": command, "machine": info} for e in entries]
    RESULTS_JSON.write_text(json.dumps(sorted(merged, key=lambda e: e["name"]), indent=1) + "\n")


def record_service_figures(entries: list[dict[str, Any]], command: str) -> None:
    """Merge figures that have no TRL counterpart into results.json, and print them as a table."""
    from bench.common import machine

    write_results(entries, command, machine())
    print("| figure | value |\n|---|---|")
    for e in entries:
        print(f"| {e['name']} | {e['ours']:.4g} {e['units']} |")


def print_table(entries: list[dict[str, Any]]) -> None:
    """A Markdown table of the figures, as RESULTS.md shows them."""
    print("| figure | ours | TRL | ours / TRL |\n|---|---|---|---|")
    for e in entries:
        ratio = "" if e["ratio"] is None else f"{e['ratio']:.2f}"
        print(f"| {e['name']} ({e['units']}) | {_fmt(e['ours'])} | {_fmt(e['trl'])} | {ratio} |")


def _fmt(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.4g}"


def setup_ppo_venv() -> None:
    """Make PPO_VENV: TRL `PPO_TRL_VERSION` with this machine's torch, transformers and pydantic versions."""
    import pydantic
    import transformers

    subprocess.run([sys.executable, "-m", "venv", str(PPO_VENV)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"trl=={PPO_TRL_VERSION}",
            f"transformers=={transformers.__version__}", f"pydantic=={pydantic.__version__}"]  # fmt: skip
    subprocess.run([str(PPO_VENV / "bin" / "pip"), "install", *pins], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="all", choices=["dpo", "reward_model", "grpo", "rloo", "ppo", "all"])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each trainer (seeds 0..reps-1)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of 8 pairs per run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the rates")
    parser.add_argument("--ppo-rollouts", type=int, default=10, help="PPO rollouts per run (2 left out as warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every trainer process")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another checkout of this repository whose trainers join the rotation")  # fmt: skip
    parser.add_argument("--no-parity", action="store_true", help="skip the loss parity checks")
    parser.add_argument("--setup-ppo-venv", action="store_true",
                        help=f"make {PPO_VENV.name}: TRL {PPO_TRL_VERSION}, the newest with a PPO trainer")  # fmt: skip
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.algo in ("grpo", "rloo", "ppo"):
            run = {("ours", "grpo"): run_ours_grpo, ("trl", "grpo"): run_trl_grpo, ("ours", "rloo"): run_ours_grpo,
                   ("trl", "rloo"): run_trl_grpo, ("ours", "ppo"): run_ours_ppo,
                   ("trl", "ppo"): run_trl_ppo}[args.child, args.algo]  # fmt: skip
            options = {"algo": args.algo} if args.algo != "ppo" else {}
            print(json.dumps(run(args.work, args.seed, args.steps, args.warmup, args.device, **options)))
            return
        run = run_ours if args.child == "ours" else run_trl
        print(json.dumps(run(args.algo, args.work, args.seed, args.steps, args.warmup, args.device)))
        return

    command = "python bench/trainers_vs_trl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.setup_ppo_venv:
        setup_ppo_venv()
        return
    algos = ["dpo", "reward_model", "grpo", "rloo", "ppo"] if args.algo == "all" else [args.algo]
    if "ppo" in algos and not (PPO_VENV / "bin" / "python").exists():
        sys.exit(f"ppo: TRL's PPO runs from {PPO_VENV}; make it first with --setup-ppo-venv")
    torch.set_num_threads(args.threads)
    info = machine()
    entries: list[dict[str, Any]] = []
    if not args.no_parity:
        from bench.parity import run_all
        from bench.parity_variants import run_all as run_all_variants

        entries += run_all() + run_all_variants()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        work = Path(tmp)
        build_models(work)
        (work / "train.json").write_text(json.dumps(preference_rows(args.steps * BATCH_SIZE, seed=1)))
        (work / "eval.json").write_text(json.dumps(preference_rows(EVAL_ROWS, seed=2)))
        prompts = max(args.steps * GRPO["prompts"], args.ppo_rollouts * PPO["prompts"])
        (work / "prompts.json").write_text(json.dumps(prompt_rows(prompts, seed=3)))
        matmul_rate = measure_matmul_rate()
        print(f"fp32 matmul rate: {matmul_rate / 1e9:.1f} GFLOP/s", flush=True)
        for algo in algos:
            print(f"{algo}:", flush=True)
            steps, warmup = (args.ppo_rollouts, 2) if algo == "ppo" else (args.steps, args.warmup)
            others = args.also
            entries += compare(algo, work, args.reps, steps, warmup, matmul_rate, args.threads, others)
        matmul_after = measure_matmul_rate()
        print(f"fp32 matmul rate after the runs: {matmul_after / 1e9:.1f} GFLOP/s", flush=True)
    write_results(entries, command, info)
    print_table(entries)


if __name__ == "__main__":
    main()
