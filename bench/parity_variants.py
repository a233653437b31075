"""Do GRPO's variants equal TRL's on identical inputs? RLOO (advantages, loss, gradient) and GSPO.

    .venv/bin/python bench/parity_variants.py

Results are merged into bench/results.json, as bench/parity.py's. TRL samples G = 4 completions for
each of 4 prompts on `builtin:tiny-llama` and scores them (the share of letters in the completion);
both sides then work on those completions. Tolerance: 1e-5 absolute.

- **RLOO** (`RLOOTrainer`, β = 0.05 with its reference model perturbed, so the KL penalty in the
  reward is not zero): TRL's advantages against our `rollout_advantages` with
  ``advantage_estimator="rloo"`` on the same old and reference log-probs, with and without
  ``normalize_advantages``. TRL's RLOO loss takes one ratio per completion,
  ``exp(Σ_t log π − Σ_t log π_old)``, and the mean over completions; ours takes a ratio per token
  and the step's aggregation. On policy (μ = 1, ratio 1: the RLOO paper's setting and our
  default) the two coincide: TRL's loss value equals ours with ``loss_aggregation="sequence"``,
  and TRL's gradient ``−(1/B)·Σ_i Â_i·Σ_t ∇log π`` equals ours with ``"constant"`` aggregation and a
  constant of 1 token. Both are compared (the gradient over every parameter of the policy).
- **GSPO** (`GRPOTrainer` with ``importance_sampling_level="sequence"``, β = 0.04, old and reference
  log-probs of two perturbed copies, and the paper's clip range 3e-4/4e-4, so some completions
  are clipped): TRL's loss and gradient against
  our `accumulate_gradients` with ``importance_sampling_level="sequence"``, for TRL's ``grpo``
  loss (our ``sequence`` aggregation, the GSPO paper's) and ``dapo`` (our ``token``). TRL 1.x
  multiplies the k3 term by the importance ratio by default (``use_bias_correction_kl``, from
  DeepSeek-V3.2), which changes its gradient even at ratio 1; ours is DeepSeekMath's plain k3 term,
  so TRL runs with ``use_bias_correction_kl=False``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.parity import TOLERANCE, _perturbed, _trl_config  # noqa: E402
from trainers.models.tiny import build_tiny_llama  # noqa: E402

PROMPTS = [{"prompt": f"say: {word}\n"} for word in ("abc", "hello there", "q", "the quick brown fox")]
G, NEW_TOKENS = 4, 16
RLOO_CASES = {"rloo": False, "rloo_normalized": True}  # → normalize_advantages
GSPO_CASES = {"sequence": "grpo", "token": "dapo"}  # our loss_aggregation → TRL's loss_type
EPS_LOW, EPS_HIGH = 3e-4, 4e-4  # the GSPO paper's clip range (§5.1), so some completions are clipped


def letter_share(completions, **kwargs) -> list[float]:
    """The share of letters in each completion: a reward that varies within every group."""
    return [sum(ch.isalpha() for ch in c) / max(1, len(c)) for c in completions]


def _grads(model: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


def _logps_under(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """(B, A) log-probs of TRL's completions under `model`, masked, in TRL's left-padded layout."""
    from trainers.ops.logprobs import selective_log_softmax

    ids, mask = inputs["completion_ids"], inputs["completion_mask"]
    full = torch.cat([inputs["prompt_ids"], ids], dim=1)
    attention = torch.cat([inputs["prompt_mask"], mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=attention, position_ids=positions).logits
    return selective_log_softmax(logits[:, -ids.shape[1] - 1 : -1], ids) * mask  # (B, A)


def _rollout(inputs: dict[str, Any], old: torch.Tensor, eos_token_id: int):
    from trainers.rl.rollout import Rollout

    ids, mask = inputs["completion_ids"], inputs["completion_mask"]
    return Rollout(
        prompt_ids=inputs["prompt_ids"], prompt_mask=inputs["prompt_mask"], response_ids=ids, response_mask=mask,
        logprobs=old, ended_with_eos=(ids == eos_token_id).any(dim=1), response_lengths=mask.sum(dim=1),
        temperature=1.0,
    )  # fmt: skip


def _hp(**options):
    from trainers.spec.config import GRPOHyperparameters

    return GRPOHyperparameters(batch_size=16, rollout_batch_size=4, num_generations=G, max_new_tokens=NEW_TOKENS,
                               max_length=128, max_prompt_length=64, **options)  # fmt: skip


def rloo_parity(case: str) -> dict[str, Any]:
    """Our RLOO advantages, on-policy loss and gradient against TRL's `RLOOTrainer`.

    Args:
        case: a key of `RLOO_CASES`.

    Returns:
        A benchmark entry, as bench/parity.py's, comparing the advantages, the loss and the gradient.
    """
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trainers.grpo import GRPOBatch, accumulate_gradients, rollout_advantages

    normalize, beta = RLOO_CASES[case], 0.05
    tiny, tokenizer = build_tiny_llama()
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        tiny.save_pretrained(Path(out) / "model")  # TRL loads its reference model from the policy's path
        policy = AutoModelForCausalLM.from_pretrained(Path(out) / "model").train()
        config = _trl_config(trl.RLOOConfig, out, num_generations=G, max_completion_length=NEW_TOKENS, beta=beta,
                             normalize_advantages=normalize, per_device_train_batch_size=16, temperature=1.0,
                             max_length=None)  # fmt: skip
        trainer = trl.RLOOTrainer(model=policy, reward_funcs=letter_share, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list(PROMPTS))  # fmt: skip
        trainer.ref_model.load_state_dict(_perturbed(trainer.ref_model, 0.02, seed=9).state_dict())
        examples = [p for p in PROMPTS for _ in range(G)]
        with torch.no_grad():
            inputs = trainer._generate_and_score_completions(examples)
        trl_kl = trainer._metrics["train"]["kl"][-1]  # mean k1 per token: the penalty is not zero
        trainer.current_gradient_accumulation_steps = 1  # set by `train` in a real run
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        trl_loss.backward()
        trl_grads = _grads(trainer.model)
        old, ref = _logps_under(policy, inputs), _logps_under(trainer.ref_model, inputs)

    texts = tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(letter_share(texts))
    rollout = _rollout(inputs, old, tokenizer.eos_token_id)
    ours = {}
    for aggregation in ("sequence", "constant"):
        hp = _hp(advantage_estimator="rloo", normalize_advantages=normalize, beta=beta, loss_aggregation=aggregation,
                 max_completion_tokens_constant=1)  # fmt: skip
        advantages = rollout_advantages(rewards, rollout.response_mask, old, ref, hp)
        batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=None, ref_logprobs=ref)  # on policy
        stats, names = accumulate_gradients(policy, batch, hp)
        ours[aggregation] = (stats[names.index("train/loss")].item(), _grads(policy))
    diffs = {
        "advantages": (advantages - inputs["advantages"]).abs().max().item(),
        "loss": abs(ours["sequence"][0] - trl_loss.item()),
        "gradient": (ours["constant"][1] - trl_grads).abs().max().item(),
    }
    return _entry(f"parity/rloo_{case}", ours["sequence"][0], trl_loss.item(), diffs, trl.__version__,
                  f"ours advantage_estimator='rloo' normalize_advantages={normalize}, β={beta} in the reward, "
                  "on policy; loss with loss_aggregation='sequence', gradient with 'constant' over 1 token; "
                  f"TRL RLOOTrainer normalize_advantages={normalize}, G={G}",
                  nonzero=int((inputs["advantages"] != 0).sum()), scale=trl_grads.abs().max().item(),
                  trl_kl=trl_kl)  # fmt: skip


def gspo_parity(case: str) -> dict[str, Any]:
    """Our GSPO loss and gradient against TRL's `GRPOTrainer(importance_sampling_level="sequence")`.

    Args:
        case: a key of `GSPO_CASES` (our loss aggregation).

    Returns:
        A benchmark entry comparing the advantages, the loss and the gradient.
    """
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trainers.grpo import GRPOBatch, accumulate_gradients, rollout_advantages

    aggregation, trl_loss_type, beta = case, GSPO_CASES[case], 0.04
    tiny, tokenizer = build_tiny_llama()
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        tiny.save_pretrained(Path(out) / "model")
        policy = AutoModelForCausalLM.from_pretrained(Path(out) / "model").train()
        # Copied before TRL wraps the policy: a copy made after would share its patched forward.
        old_model, ref_model = _perturbed(policy, 0.01, seed=8), _perturbed(policy, 0.02, seed=9)
        config = _trl_config(trl.GRPOConfig, out, num_generations=G, max_completion_length=NEW_TOKENS, beta=beta,
                             loss_type=trl_loss_type, importance_sampling_level="sequence", epsilon=EPS_LOW,
                             epsilon_high=EPS_HIGH, use_bias_correction_kl=False,
                             per_device_train_batch_size=16, temperature=1.0, max_length=None)  # fmt: skip
        trainer = trl.GRPOTrainer(model=policy, reward_funcs=letter_share, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list(PROMPTS))  # fmt: skip
        examples = [p for p in PROMPTS for _ in range(G)]
        with torch.no_grad():
            inputs = trainer._generate_and_score_completions(examples)
        # Sequence ratios a little off 1: with GSPO's narrow clip range some completions fall outside it.
        old, ref = _logps_under(old_model, inputs), _logps_under(ref_model, inputs)
        inputs["old_per_token_logps"], inputs["ref_per_token_logps"] = old, ref
        trainer.current_gradient_accumulation_steps = 1
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        trl_loss.backward()
        trl_grads = _grads(trainer.model)

    texts = tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(letter_share(texts))
    rollout = _rollout(inputs, old, tokenizer.eos_token_id)
    hp = _hp(importance_sampling_level="sequence", loss_aggregation=aggregation, beta=beta, epsilon_low=EPS_LOW,
             epsilon_high=EPS_HIGH)  # fmt: skip
    advantages = rollout_advantages(rewards, rollout.response_mask, old, ref, hp)
    batch = GRPOBatch(rollout=rollout, advantages=advantages, old_logprobs=old, ref_logprobs=ref)
    stats, names = accumulate_gradients(policy, batch, hp)
    ours_loss, ours_grads = stats[names.index("train/loss")].item(), _grads(policy)
    diffs = {
        "advantages": (advantages - inputs["advantages"]).abs().max().item(),
        "loss": abs(ours_loss - trl_loss.item()),
        "gradient": (ours_grads - trl_grads).abs().max().item(),
    }
    return _entry(f"parity/gspo_{case}", ours_loss, trl_loss.item(), diffs, trl.__version__,
                  f"ours importance_sampling_level='sequence' loss_aggregation={aggregation!r}; TRL "
                  f"importance_sampling_level='sequence' loss_type={trl_loss_type!r}; β={beta}, "
                  f"ε_low={EPS_LOW}, ε_high={EPS_HIGH}, G={G}",
                  nonzero=int((inputs["advantages"] != 0).sum()), scale=trl_grads.abs().max().item(),
                  clipfrac=stats[names.index("policy/clipfrac")].item())  # fmt: skip


def _entry(name: str, ours: float, theirs: float, diffs: dict[str, float], version: str, what: str,
           **extra: Any) -> dict[str, Any]:  # fmt: skip
    diff = max(diffs.values())
    return {
        "name": name, "what": what, "units": "loss", "ours": ours, "trl": theirs, "ratio": None,
        "max_abs_diffs": diffs, "max_abs_diff": diff, "same_token_ids": True, "compared": list(diffs),
        "tolerance": TOLERANCE, "pass": diff <= TOLERANCE, "trl_version": version, **extra,
    }  # fmt: skip


def run_all() -> list[dict[str, Any]]:
    """Every variant's parity check, printed as it finishes."""
    entries = []
    checks = [*(lambda c=c: rloo_parity(c) for c in RLOO_CASES), *(lambda c=c: gspo_parity(c) for c in GSPO_CASES)]
    for check in checks:
        entry = check()
        print(f"{entry['name']}: {'pass' if entry['pass'] else 'FAIL'} "
              + ", ".join(f"{k} {v:.2e}" for k, v in entry["max_abs_diffs"].items()), flush=True)  # fmt: skip
        entries.append(entry)
    return entries


if __name__ == "__main__":
    from bench.common import machine
    from bench.trainers_vs_trl import write_results

    results = run_all()
    write_results(results, "python bench/parity_variants.py", machine())  # merged into bench/results.json
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(r["pass"] for r in results) else 1)
