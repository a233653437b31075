"""Hyperparameters of the online-RL trainers, PPO and GRPO (torch-free).

Re-exported by `trainers.spec.hyperparameters`, which documents the batch semantics: a rollout's
completions are cut into minibatches of `batch_size`, each one optimizer step.
Defaults follow the papers (PPO: Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, and Ziegler
et al. 2019, https://arxiv.org/abs/1909.08593; GRPO: Shao et al. 2024, https://arxiv.org/abs/2402.03300)
and TRL where the papers are silent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from trainers.spec.hyperparameters import LoopHyperparameters, check_whole_minibatches


class RLHyperparameters(LoopHyperparameters):
    """What PPO and GRPO share: sampling, rollout size, and how a rollout becomes optimizer steps.

    See the module docstring for the batch semantics: `batch_size` completions make one optimizer
    step, and a rollout's completions are split into such minibatches.
    """

    learning_rate: float = Field(
        1e-6, gt=0, le=1,
        description="Peak AdamW learning rate of the policy (DeepSeekMath's GRPO: 1e-6; tiny-llama learns at 1e-2).",
    )
    batch_size: int = Field(
        8, ge=1, le=65536,
        description="Completions per optimizer step (one minibatch of a rollout), split across "
                    "gradient_accumulation_steps micro-batches.",
    )
    max_new_tokens: int = Field(
        64, ge=1, le=32768, validate_default=True,
        description="Most tokens sampled per completion, EOS included; max_prompt_length + max_new_tokens "
                    "must fit in max_length.",
    )
    temperature: float = Field(
        1.0, gt=0, le=10,
        description="τ: sampling logits are divided by it, and so are the logits of every later pass "
                    "(old policy, reference, training), so all of them score the distribution that was sampled.",
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: sample from the most probable tokens holding this mass."
    )
    rollout_batch_size: int = Field(
        8, ge=1, le=65536, description="Prompts sampled per rollout (GRPO: num_generations completions for each)."
    )
    missing_eos_penalty: float | None = Field(
        None, ge=0, le=1e6,
        description="Subtracted from the reward of a completion cut at max_new_tokens without EOS, so the "
                    "policy learns to finish (as TRL's missing_eos_penalty); null: no penalty.",
    )
    log_samples: int = Field(
        4, ge=0, le=64,
        description="Completions of a rollout reported as samples (prompt, completion, reward) whenever its "
                    "metrics are logged (every log_every steps); GRPO takes them from different prompts first. "
                    "0: none.",
    )
    generation_backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="The engine that samples rollouts: 'hf' runs the training model itself (a static KV cache, "
                    "a compiled decoding step as compile_generation says); 'vllm' a vLLM engine given the "
                    "policy's weights after each optimizer step, its memory freed between rollouts (the optional "
                    "vllm extra, CUDA). The losses' log-probs come from the training model either way (PPO's "
                    "π_old from the hf sampling pass itself in fp32, see recompute_old_logprobs); an engine's own "
                    "log-probs serve tis_cap only.",
    )
    compile_generation: bool | None = Field(
        None,
        description="With generation_backend 'hf': decode with a torch.compile'd one-token step over a static KV "
                    "cache (mode reduce-overhead, CUDA graphs, on CUDA). null: on CUDA on one process; on the CPU only "
                    "when a run plans 10,000 decode steps (rollouts × max_new_tokens) or more, which repay the "
                    "compile (16-26 s cold, 3-11 s from the on-disk compile cache; steps 2-5× faster on a "
                    "tiny model, about 1.2× where matrix products fill a step). "
                    "Sampled tokens are the same either way, up to float rounding.",
    )
    tis_cap: float | None = Field(
        None, ge=1, le=1e6,
        description="Truncated importance sampling (Yao et al. 2025, 'Your efficient RL framework secretly "
                    "brings you off-policy RL training'): multiply each token's policy-gradient term by "
                    "min(exp(log π_old − log π_engine), tis_cap), correcting for an engine (vLLM) whose sampling "
                    "probabilities differ from the trainer's; reported as policy/tis_weight_mean and "
                    "policy/tis_clipfrac. The paper uses 2. null: off.",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1,
        description="With generation_backend 'vllm': the share of each GPU's memory the engine may take while "
                    "awake (weights and KV cache); the rest stays for training. It holds none while asleep "
                    "between rollouts (CUDA).",
    )

    @field_validator("max_new_tokens")
    @classmethod
    def _prompt_and_completion_fit(cls, value: int, info: ValidationInfo) -> int:
        max_length, max_prompt = info.data.get("max_length"), info.data.get("max_prompt_length")
        if max_length is not None and max_prompt is not None and max_prompt + value > max_length:
            raise ValueError(
                f"max_prompt_length ({max_prompt}) + max_new_tokens ({value}) must not exceed max_length ({max_length})"
            )
        return value

    @property
    def completions_per_rollout(self) -> int:
        """Completions sampled per rollout."""
        return self.rollout_batch_size

    @property
    def num_minibatches(self) -> int:
        """Optimizer steps per pass over a rollout: ``completions_per_rollout / batch_size``."""
        return self.completions_per_rollout // self.batch_size


class GRPOHyperparameters(RLHyperparameters):
    """Hyperparameters of Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1).

    Defaults: on-policy, one optimizer step per rollout (8 prompts × 8 completions = batch_size 64,
    μ = 1), as in DeepSeekMath's single update per exploration stage; the loss is then the plain
    policy gradient with a k3 KL penalty, since the ratio is 1.
    """

    batch_size: int = Field(
        64, ge=1, le=65536,
        description="Completions per optimizer step (one minibatch of a rollout), split across "
                    "gradient_accumulation_steps micro-batches; rollout_batch_size × num_generations "
                    "must be a multiple of it.",
    )
    num_generations: int = Field(
        8, ge=2, le=1024, validate_default=True,
        description="G: completions sampled per prompt, whose rewards are compared with each other "
                    "(TRL's default; DeepSeekMath used 64).",
    )
    scale_rewards: bool = Field(
        True,
        description="Divide each completion's advantage by its group's reward std (GRPO); false keeps "
                    "r − mean only (Dr. GRPO, Liu et al. 2025), which does not up-weight too easy or too hard prompts.",
    )
    epsilon_low: float = Field(
        0.2, ge=0, lt=1, description="ε_low: the probability ratio is clipped below at 1 − ε_low (PPO/GRPO: 0.2)."
    )
    epsilon_high: float = Field(
        0.2, ge=0, le=10,
        description="ε_high: the ratio is clipped above at 1 + ε_high; 0.28 is DAPO's clip-higher "
                    "(Yu et al. 2025), which leaves room for unlikely tokens to grow.",
    )
    beta: float = Field(
        0.04, ge=0, le=100,
        description="β: weight of the KL penalty towards the reference (initial) policy: with the 'grpo' "
                    "estimator a k3 term added to the per-token loss (DeepSeekMath: 0.04); with 'rloo' and "
                    "'reinforce_pp' a k1 penalty −β·(log π_old − log π_ref) in the reward instead (summed per "
                    "completion for RLOO, per token for REINFORCE++; no loss term, as TRL's RLOO and OpenRLHF). "
                    "0 loads no reference model at all.",
    )
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="How per-token losses become the step's loss: 'token' averages over every token of the "
                    "step (DAPO; TRL's default), so long completions are not down-weighted; 'sequence' "
                    "averages each completion over its tokens, then over completions (the GRPO paper); "
                    "'constant' divides the sum by completions × a constant (Dr. GRPO). Always over the whole "
                    "optimizer step, so micro-batching does not change the gradient.",
    )
    num_iterations: int = Field(
        1, ge=1, le=64,
        description="μ: passes of clipped updates over each rollout (DeepSeekMath: 1). Above 1, old "
                    "log-probs are recomputed after sampling and the clip matters.",
    )
    max_completion_tokens_constant: int | None = Field(
        None, ge=1, le=1_000_000,
        description="The constant of the 'constant' aggregation (tokens per completion); null uses max_new_tokens.",
    )
    advantage_estimator: Literal["grpo", "rloo", "reinforce_pp"] = Field(
        "grpo",
        description="How rewards become advantages (no critic for any): 'grpo' (r − mean_G)/std_G of the "
                    "group (Shao et al. 2024); 'rloo' r_i − mean of the other G − 1 rewards of the prompt "
                    "(Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740); 'reinforce_pp' REINFORCE++: "
                    "per-token reward-to-go of the KL-penalised reward, standardised over all tokens of the "
                    "rollout (Hu 2025, https://arxiv.org/abs/2501.03262). scale_rewards applies to 'grpo' only.",
    )
    normalize_advantages: bool = Field(
        False,
        description="With advantage_estimator 'rloo': standardise the advantages over the rollout's "
                    "completions, (Â − mean)/(std + 1e-4), as TRL's RLOO option (off in the paper and TRL).",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token",
        description="'token': a PPO ratio per token; 'sequence': GSPO's ratio exp(mean_t(log π − log π_old)) "
                    "per completion, clipped per completion and applied to all its tokens (Zheng et al. 2025, "
                    "https://arxiv.org/abs/2507.18071; TRL's importance_sampling_level). The GSPO paper pairs "
                    "it with loss_aggregation 'sequence' and a far smaller clip range (epsilon_low 3e-4, "
                    "epsilon_high 4e-4); the defaults here stay GRPO's. Matters only when the ratio is not 1 "
                    "(num_iterations > 1 or several minibatches per rollout).",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling (Yu et al. 2025, §3.2): groups whose num_generations rewards are "
                    "all equal (no advantage, no gradient) are dropped, and the next rollout_batch_size prompts "
                    "of the data order are sampled and graded, until rollout_batch_size groups with differing "
                    "rewards are in or max_sampling_rounds rounds were sampled; the update then trains on the "
                    "groups kept (none kept: the rollout is skipped, with a warning event, and 5 skipped in a row "
                    "fail the job). The filter reads the final reward, overlong penalty included; reward/mean is "
                    "then the kept groups', sampling/reward_mean every completion's.",
    )
    max_sampling_rounds: int = Field(
        3, ge=1, le=100,
        description="With dynamic_sampling: most rounds of rollout_batch_size prompts sampled for one rollout "
                    "(verl's max_num_gen_batches).",
    )
    overlong_buffer: int | None = Field(
        None, ge=1, le=32768,
        description="L_cache of DAPO's overlong reward shaping (Yu et al. 2025, eq. 13), in tokens: a completion "
                    "longer than max_new_tokens − L_cache loses overlong_penalty_factor × (its excess / L_cache), "
                    "up to the whole factor at max_new_tokens; must be less than max_new_tokens. null: off.",
    )
    overlong_penalty_factor: float = Field(
        1.0, ge=0, le=1e6, description="The largest overlong penalty, reached at max_new_tokens (DAPO: 1)."
    )

    @field_validator("normalize_advantages")
    @classmethod
    def _normalize_needs_rloo(cls, value: bool, info: ValidationInfo) -> bool:
        estimator = info.data.get("advantage_estimator")
        if value and estimator not in (None, "rloo"):
            raise ValueError(f"normalize_advantages applies to advantage_estimator 'rloo' only, not {estimator!r}")
        return value

    @field_validator("overlong_buffer")
    @classmethod
    def _buffer_inside_completion(cls, value: int | None, info: ValidationInfo) -> int | None:
        max_new_tokens = info.data.get("max_new_tokens")
        if value is not None and max_new_tokens is not None and value >= max_new_tokens:
            raise ValueError(f"overlong_buffer ({value}) must be less than max_new_tokens ({max_new_tokens})")
        return value

    @property
    def completions_per_rollout(self) -> int:
        """Completions sampled per rollout: ``rollout_batch_size × num_generations``."""
        return self.rollout_batch_size * self.num_generations

    @field_validator("num_generations")
    @classmethod
    def _whole_minibatches(cls, value: int, info: ValidationInfo) -> int:
        prompts = info.data.get("rollout_batch_size")
        if prompts is not None:
            completions = prompts * value
            check_whole_minibatches(
                completions, info.data.get("batch_size"),
                f"rollout_batch_size ({prompts}) × num_generations ({value}) = {completions} completions",
            )
        return value


class PPOHyperparameters(RLHyperparameters):
    """Hyperparameters of PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022).

    A rollout samples one completion per prompt; its completions are split into `num_minibatches`
    minibatches of `batch_size`, and `ppo_epochs` passes over them (shuffled) make the updates.
    """

    rollout_batch_size: int = Field(
        32, ge=1, le=65536, validate_default=True,
        description="Prompts (and so completions) per rollout; must be a multiple of batch_size, "
                    "the quotient being the number of minibatches.",
    )
    kl_coef: float = Field(
        0.05, ge=0, le=100,
        description="β: per-token KL penalty −β·(log π_old − log π_ref) added to the rewards (TRL's default; "
                    "InstructGPT: 0.02); with adaptive_kl, its starting value.",
    )
    adaptive_kl: bool = Field(
        False, description="Steer β towards target_kl by proportional control (Ziegler et al. 2019, §2.2)."
    )
    target_kl: float = Field(
        6.0, gt=0, le=1000, description="With adaptive_kl: the sequence KL in nats to hold (Ziegler et al.: 6)."
    )
    kl_horizon: int = Field(
        10_000, ge=1, le=100_000_000,
        description="With adaptive_kl: completions over which β makes a full 20% correction (Ziegler et al.: 10,000).",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="γ: discount per token (1.0 for language models).")
    lam: float = Field(0.95, ge=0, le=1, description="λ of generalized advantage estimation (Schulman et al. 2016).")
    cliprange: float = Field(0.2, gt=0, lt=1, description="ε: the probability ratio is clipped to [1 − ε, 1 + ε].")
    cliprange_value: float = Field(
        0.2, gt=0, le=1e6, description="ε_v: a value prediction may move at most this far from its rollout value."
    )
    vf_coef: float = Field(
        0.1, ge=0, le=100,
        description="Weight of the value loss in the step's loss (TRL's default). The critic has its own "
                    "optimizer, so the weight scales its gradients before clipping and its reported loss.",
    )
    ppo_epochs: int = Field(4, ge=1, le=64, description="K: passes of updates over each rollout (TRL: 4).")
    whiten_advantages: bool = Field(
        True, description="Normalise advantages to mean 0 and std 1 over the rollout's tokens."
    )
    entropy_coef: float = Field(
        0.0, ge=0, le=10, description="Weight of an entropy bonus in the policy loss; 0 (off) as in TRL."
    )
    ptx_coef: float = Field(
        0.0, ge=0, le=1000,
        description="γ of PPO-ptx (Ouyang et al. 2022, eq. 2): weight of a language-modelling loss on the "
                    "job's text rows, mixed into every update; 0 turns it off.",
    )
    reward_clip: float | None = Field(
        None, gt=0, le=1e6, description="Bound each completion's score to [−reward_clip, reward_clip]; null: no bound."
    )
    value_model: Literal["policy", "reward_model"] = Field(
        "policy",
        description="Where the critic starts: 'policy' puts a fresh value head on a copy of the base model; "
                    "'reward_model' starts from the first model reward's checkpoint (its backbone and head), "
                    "as InstructGPT did.",
    )
    critic_learning_rate: float = Field(
        9e-6, gt=0, le=1, description="Peak AdamW learning rate of the critic (OpenRLHF's default)."
    )
    recompute_old_logprobs: bool = Field(
        False,
        description="Recompute log π_old with a forward pass of the policy over each rollout. Off, the sampling "
                    "pass's own log-probs are π_old where they are the training model's (generation_backend 'hf' "
                    "in fp32: the cached and full passes agree to about 1e-6), as TRL does, saving one forward "
                    "pass per rollout; in bf16/fp16 or with 'vllm' π_old is always recomputed. On, runs on "
                    "different numbers of processes agree to float rounding (each rank's sampling pass rounds "
                    "with its own padding).",
    )

    @field_validator("rollout_batch_size")
    @classmethod
    def _whole_minibatches(cls, value: int, info: ValidationInfo) -> int:
        check_whole_minibatches(value, info.data.get("batch_size"), f"rollout_batch_size ({value})")
        return value
