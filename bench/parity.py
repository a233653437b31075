"""Do our losses equal TRL's on identical inputs? DPO's loss family, the reward-model loss, GRPO's
(and SimPO's and ORPO's: `bench.parity_preference`; KTO's: `bench.parity_kto`; DAPO's overlong
shaping: `bench.parity_dapo`).

    .venv/bin/python bench/parity.py

Results are merged into bench/results.json. Each check builds `builtin:tiny-llama` (a reward model
on it for the reward check), hands the same rows and weights to TRL's trainer and to ours, and
compares TRL's ``compute_loss`` and logged metrics on one collated batch with our
``pair_losses_and_stats`` on ours, in the layout our training uses. The reference model is a
perturbed copy of the policy, so the log-ratios are far from zero. Both sides tokenise the rows
themselves; the token ids are compared first. GRPO's check also compares the gradient of every
parameter. Tolerance: 1e-5 absolute.

TRL (1.x) has no label-smoothed "sigmoid" loss any more: its ``sigmoid`` ignores
``label_smoothing``, and its ``robust`` loss is a different (unbiased) estimator. Its ``aot``
loss is ``−(1−ε)·log σ(β·δ) − ε·log σ(−β·δ)`` with δ the sorted log-ratio differences of the
batch; on a batch of one pair δ = h, which is cDPO's loss exactly. The cDPO check therefore runs
TRL's ``aot`` one pair at a time.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from trainers.data.preference import collate_pairs, tokenize_pairs  # noqa: E402
from trainers.dpo import Reference, pair_losses_and_stats  # noqa: E402
from trainers.models.tiny import build_tiny_llama  # noqa: E402
from trainers.reward_model import pair_losses_and_stats as reward_losses_and_stats  # noqa: E402
from trainers.spec.config import DPOHyperparameters, RewardModelHyperparameters  # noqa: E402

TOLERANCE = 1e-5
BETA = 0.1
DPO_CASES = {  # our (loss_type, label_smoothing) → TRL's loss_type, and whether TRL sees one pair at a time
    "sigmoid": ("sigmoid", 0.0, "sigmoid", False),
    "cdpo": ("sigmoid", 0.2, "aot", True),
    "ipo": ("ipo", 0.0, "ipo", False),
    "hinge": ("hinge", 0.0, "hinge", False),
}
DPO_STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
             "logps/rejected")  # fmt: skip


def parity_rows(n: int = 6) -> list[dict[str, Any]]:
    """Preference rows of different prompt and response lengths, so padding and masks matter."""
    words = ["abc", "hello there", "q", "the quick brown fox", "xyz xyz", "lorem ipsum dolor"]
    return [
        {"prompt": f"say: {words[i % 6]}\n", "chosen": words[(i + 1) % 6].upper() * (1 + i % 3),
         "rejected": words[(i + 2) % 6] * (1 + (i + 1) % 2), "margin": 0.25 * i}
        for i in range(n)
    ]  # fmt: skip


def _perturbed(model: torch.nn.Module, scale: float = 0.02, seed: int = 7) -> torch.nn.Module:
    """A copy of `model` with seeded Gaussian noise on every weight: a reference unlike the policy."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return other.eval()


def _trl_config(cls, out: str, **kwargs):
    settings = {"per_device_train_batch_size": 8, "max_length": 128} | kwargs
    settings = {key: value for key, value in settings.items() if value is not None}
    return cls(output_dir=out, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", use_cpu=True,
               disable_tqdm=True, **settings)  # fmt: skip


def dpo_parity(case: str) -> dict[str, Any]:
    """Our DPO loss and metrics against TRL's `DPOTrainer.compute_loss` for one loss of the family.

    Args:
        case: a key of `DPO_CASES`.

    Returns:
        A benchmark entry: ours, TRL's, the largest absolute difference over the loss and the
        metrics, whether the token ids matched, and pass/fail.
    """
    import trl
    from datasets import Dataset

    loss_type, smoothing, trl_loss, one_pair = DPO_CASES[case]
    policy, tokenizer = build_tiny_llama()
    policy.train()
    reference = _perturbed(policy)
    rows = [{k: v for k, v in row.items() if k != "margin"} for row in parity_rows()]
    with tempfile.TemporaryDirectory() as out:
        config = _trl_config(trl.DPOConfig, out, beta=BETA, loss_type=[trl_loss], label_smoothing=smoothing)
        trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        groups = [[e] for e in examples] if one_pair else [examples]
        trl_losses, trl_stats = [], {name: [] for name in DPO_STATS}
        with torch.no_grad():
            for group in groups:
                trl_losses.append(trainer.compute_loss(trainer.model, trainer.data_collator(group)).item())
                for name in DPO_STATS:
                    trl_stats[name].append(trainer._metrics["train"][name][-1])
    theirs = {"loss": sum(trl_losses) / len(trl_losses)} | {n: sum(v) / len(v) for n, v in trl_stats.items()}

    hp = DPOHyperparameters(beta=BETA, loss_type=loss_type, label_smoothing=smoothing, max_length=128,
                            max_prompt_length=64)  # fmt: skip
    pairs = tokenize_pairs(rows, tokenizer, max_length=128, max_prompt_length=64)
    same_tokens = all(
        (p.prompt_ids, p.chosen_ids, p.rejected_ids) == (e["prompt_ids"], e["chosen_ids"], e["rejected_ids"])
        for p, e in zip(pairs, examples, strict=True)
    )
    batch = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=8)  # grouped by length, as in training
    with torch.no_grad():
        losses, stats = pair_losses_and_stats(policy, batch, Reference(model=reference).logps(batch), hp)
    ours = {"loss": losses.mean().item()} | dict(zip(DPO_STATS, stats[1:].mean(dim=1).tolist(), strict=True))
    what = f"ours loss_type={loss_type!r} label_smoothing={smoothing}; TRL loss_type={trl_loss!r}"
    what += " one pair per batch" if one_pair else ""
    compared = ("loss",) if loss_type == "ipo" else None
    if compared:
        what += "; loss only: our IPO metrics are length-averaged log-probs and rewards, TRL's are sums"
    return _entry(f"parity/dpo_{case}", ours, theirs, same_tokens, trl.__version__, what, compared)


def reward_parity(center: float = 0.01) -> dict[str, Any]:
    """Our Bradley–Terry loss (with margins and centring) against TRL's `RewardTrainer.compute_loss`.

    Args:
        center: the centring coefficient η given to both.

    Returns:
        A benchmark entry, as `dpo_parity`'s.
    """
    import trl
    from datasets import Dataset

    from trainers.models.reward import load_reward_model, shares_prompts

    model, tokenizer = load_reward_model("builtin:tiny-llama")
    with torch.no_grad():  # a score head far from its small initial draw
        model.score.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    model.train()
    rows = parity_rows()
    with tempfile.TemporaryDirectory() as out:
        config = _trl_config(trl.RewardConfig, out, center_rewards_coefficient=center)
        trainer = trl.RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer)  # fmt: skip
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples)).item()
        theirs = {"loss": loss, "accuracy": trainer._metrics["train"]["accuracy"][-1],
                  "margin": trainer._metrics["train"]["margin"][-1]}  # fmt: skip

    hp = RewardModelHyperparameters(center_rewards_coefficient=center, max_length=128, max_prompt_length=64)
    pairs = tokenize_pairs(rows, tokenizer, max_length=128, max_prompt_length=64)
    same_tokens = all(
        (p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids) == (e["chosen_ids"], e["rejected_ids"])
        for p, e in zip(pairs, examples, strict=True)
    )
    batch = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=8,
                          shared_prompt=shares_prompts(model, pairs))  # the layout training uses  # fmt: skip
    assert batch.shared, "the reward model's attention should take the shared-prompt layout"
    margins = torch.tensor([row["margin"] for row in rows])
    with torch.no_grad():
        losses, stats = reward_losses_and_stats(model, batch, margins, hp)
    ours = {"loss": losses.mean().item(), "accuracy": stats[1].mean().item(), "margin": stats[2].mean().item()}
    return _entry("parity/reward_model", ours, theirs, same_tokens, trl.__version__,
                  f"Bradley-Terry with per-pair margins and centring coefficient {center}")  # fmt: skip


GRPO_CASES = {  # our (loss_aggregation, scale_rewards) → TRL's (loss_type, scale_rewards)
    "token_scaled": ("token", True, "dapo", "group"),
    "sequence_scaled": ("sequence", True, "grpo", "group"),
    "constant_unscaled": ("constant", False, "dr_grpo", "none"),
}
OLD_SCALE = 0.01  # noise on the old policy's weights: ratios off 1, some outside [1 − ε, 1 + ε]


def grpo_parity(case: str) -> dict[str, Any]:
    """Our GRPO advantages, loss and gradient against TRL's `GRPOTrainer` on TRL's own sampled completions.

    TRL samples G = 4 completions for each of 4 prompts and scores them (the share of letters in the
    completion: a reward that varies within every group); its advantages are compared with our
    `group_advantages` of the same rewards.
    Then both losses are computed on the same completions with the same old and reference log-probs
    (those of two perturbed copies of the policy, so the ratios are off 1, some are clipped, and the
    KL is not zero): TRL's ``_compute_loss`` and its gradient against our `accumulate_gradients`.
    The copies are made before TRL wraps the policy: TRL sets the model's ``forward`` as an
    instance attribute, so a copy made afterwards would run the policy's own weights (every ratio
    1, the KL 0). TRL 1.x multiplies the k3 term by the ratio by default (``use_bias_correction_kl``,
    from DeepSeek-V3.2); ours is DeepSeekMath's plain k3, so TRL runs with it off.

    Args:
        case: a key of `GRPO_CASES`.

    Returns:
        A benchmark entry comparing the advantages, the loss and the gradient of every parameter, with
        how far the ratios are from 1, the KL and the clipped share on both sides.
    """
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from bench.parity_variants import _grads, _logps_under, _rollout
    from trainers.grpo import GRPOBatch, accumulate_gradients
    from trainers.ops.advantages import group_advantages
    from trainers.spec.config import GRPOHyperparameters

    aggregation, scale, trl_loss, trl_scale = GRPO_CASES[case]
    tiny, tokenizer = build_tiny_llama()
    tokenizer.padding_side = "left"
    prompts = [{"prompt": f"say: {word}\n"} for word in ("abc", "hello there", "q", "the quick brown fox")]
    G, new_tokens, beta = 4, 16, 0.04

    def letter_share(completions, **kwargs):
        return [sum(ch.isalpha() for ch in c) / max(1, len(c)) for c in completions]  # varied, in [0, 1]

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        tiny.save_pretrained(Path(out) / "model")  # TRL loads its reference model from the policy's path
        policy = AutoModelForCausalLM.from_pretrained(Path(out) / "model").train()
        # Copied before TRL wraps the policy: a copy made after would share its patched forward.
        old_model, ref_model = _perturbed(policy, OLD_SCALE, seed=8), _perturbed(policy, 0.02, seed=9)
        config = _trl_config(trl.GRPOConfig, out, num_generations=G, max_completion_length=new_tokens, beta=beta,
                             loss_type=trl_loss, scale_rewards=trl_scale, epsilon=0.2, use_bias_correction_kl=False,
                             per_device_train_batch_size=16, temperature=1.0, max_length=None)  # fmt: skip
        trainer = trl.GRPOTrainer(model=policy, reward_funcs=letter_share, args=config, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list(prompts))  # fmt: skip
        examples = [p for p in prompts for _ in range(G)]
        with torch.no_grad():
            inputs = trainer._generate_and_score_completions(examples)
        old, ref = _logps_under(old_model, inputs), _logps_under(ref_model, inputs)
        inputs["old_per_token_logps"], inputs["ref_per_token_logps"] = old, ref
        trainer.current_gradient_accumulation_steps = 1  # set by `train` in a real run
        trl_loss_tensor = trainer._compute_loss(trainer.model, inputs)
        trl_loss_tensor.backward()
        trl_grads = _grads(trainer.model)
        trl_kl, trl_clipped = (trainer._metrics["train"][k][-1] for k in ("kl", "clip_ratio/region_mean"))
        log_ratio = (_logps_under(policy, inputs) - old).abs().max().item()  # 0 would mean every ratio is 1

    texts = tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
    rewards = torch.tensor(letter_share(texts))
    ours_advantages, _ = group_advantages(rewards, G, scale_std=scale)
    hp = GRPOHyperparameters(batch_size=16, rollout_batch_size=4, num_generations=G, max_new_tokens=new_tokens,
                             beta=beta, loss_aggregation=aggregation, scale_rewards=scale, max_length=128,
                             max_prompt_length=64)  # fmt: skip
    rollout = _rollout(inputs, old, tokenizer.eos_token_id)
    batch = GRPOBatch(rollout=rollout, advantages=ours_advantages, old_logprobs=old, ref_logprobs=ref)
    stats, names = accumulate_gradients(policy, batch, hp)
    ours_grads = _grads(policy)
    ours = {"loss": stats[names.index("train/loss")].item(), "advantages": ours_advantages.tolist()}
    theirs = {"loss": trl_loss_tensor.item(), "advantages": inputs["advantages"].tolist()}
    diffs = {
        "advantages": (ours_advantages - inputs["advantages"]).abs().max().item(),
        "loss": abs(ours["loss"] - theirs["loss"]),
        "gradient": (ours_grads - trl_grads).abs().max().item(),
    }
    diff = max(diffs.values())
    return {
        "name": f"parity/grpo_{case}", "units": "loss", "ours": ours["loss"], "trl": theirs["loss"], "ratio": None,
        "what": f"ours loss_aggregation={aggregation!r} scale_rewards={scale}; TRL loss_type={trl_loss!r} "
                f"scale_rewards={trl_scale!r} use_bias_correction_kl=False; β={beta}, ε=0.2, G={G}; "
                "advantages, loss and gradient",
        "ours_metrics": ours, "trl_metrics": theirs, "max_abs_diffs": diffs, "max_abs_diff": diff,
        "same_token_ids": True, "compared": list(diffs), "tolerance": TOLERANCE, "pass": diff <= TOLERANCE,
        "nonzero_advantages": int((inputs["advantages"] != 0).sum()), "trl_version": trl.__version__,
        "grad_scale": trl_grads.abs().max().item(), "max_abs_log_ratio": log_ratio, "trl_kl": trl_kl,
        "ours_kl": stats[names.index("objective/kl")].item(), "trl_clipped": trl_clipped,
        "ours_clipfrac": stats[names.index("policy/clipfrac")].item(),
    }  # fmt: skip


def _entry(
    name: str, ours: dict, theirs: dict, same_tokens: bool, version: str, what: str, compared=None
) -> dict[str, Any]:
    diff = max(abs(ours[k] - theirs[k]) for k in compared or ours)
    return {
        "name": name, "what": what, "units": "loss", "ours": ours["loss"], "trl": theirs["loss"], "ratio": None,
        "ours_metrics": ours, "trl_metrics": theirs, "max_abs_diff": diff, "same_token_ids": same_tokens,
        "compared": list(compared or ours), "tolerance": TOLERANCE, "pass": same_tokens and diff <= TOLERANCE,
        "trl_version": version,
    }  # fmt: skip


def run_all() -> list[dict[str, Any]]:
    """Every parity check, printed as it finishes."""
    entries = []
    checks = [*(lambda c=c: dpo_parity(c) for c in DPO_CASES), reward_parity]
    checks += [lambda c=c: grpo_parity(c) for c in GRPO_CASES]
    from bench.parity_preference import SIMPO_CASES, orpo_parity, simpo_parity  # SimPO and ORPO: no reference

    checks += [*(lambda c=c: simpo_parity(c) for c in SIMPO_CASES), orpo_parity]
    from bench.parity_kto import KTO_CASES, kto_parity  # KTO: unpaired feedback

    checks += [lambda c=c: kto_parity(c) for c in KTO_CASES]
    from bench.parity_dapo import overlong_parity  # DAPO's overlong shaping (TRL has no dynamic sampling)

    checks += [overlong_parity]
    for check in checks:
        entry = check()
        print(f"{entry['name']}: {'pass' if entry['pass'] else 'FAIL'} (max |ours − TRL| = "
              f"{entry['max_abs_diff']:.2e}, same token ids: {entry['same_token_ids']})", flush=True)  # fmt: skip
        entries.append(entry)
    return entries


if __name__ == "__main__":
    from bench.common import machine
    from bench.trainers_vs_trl import write_results

    results = run_all()
    write_results(results, "python bench/parity.py", machine())  # merged into bench/results.json
    print(json.dumps(results, indent=1))
    sys.exit(0 if all(r["pass"] for r in results) else 1)
