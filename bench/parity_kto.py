"""Does our KTO loss equal TRL's on identical inputs? Feedback rows, and preference rows unpaired.

    .venv/bin/python bench/parity.py   (runs these with the other parity checks)

Each check builds `builtin:tiny-llama` and a perturbed copy of it as the reference (so the log-ratios
and the KL estimate are far from zero), hands the same rows and weights to TRL's ``KTOTrainer`` and
to ours, and compares TRL's ``compute_loss`` and logged metrics (``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``, ``kl``) on one
collated batch of every example with our `trainers.kto.accumulate_gradients` (no backward) on the
same examples as one micro-batch. TRL builds the mismatched pairs by rotating the completions by
one within each batch of ``per_device_train_batch_size``; the batch holds every example, as our
groups of ``batch_size`` do, and the mismatched completions' token ids are compared with the
others. Preference rows check the unpairing too (TRL's ``unpair_preference_dataset`` inside its
trainer, our `unpair_preference_rows`). Tolerance: 1e-5 absolute (`bench.parity.TOLERANCE`).
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from bench.parity import _entry, _perturbed, _trl_config, parity_rows
from trainers.data.feedback import tokenize_feedback
from trainers.kto import TRAIN_METRICS, FeedbackReference, accumulate_gradients
from trainers.models.tiny import build_tiny_llama
from trainers.spec.kto import KTOHyperparameters

KTO_CASES = {  # name → (rows, β, desirable weight, undesirable weight, reference noise)
    "feedback_weighted": ("feedback", 0.1, 1.33, 0.7, 0.02),
    "preference": ("preference", 0.5, 1.0, 1.0, 0.05),
}
KTO_STATS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")
__all__ = ["KTO_CASES", "kto_parity"]


def feedback_parity_rows(n: int = 8) -> list[dict[str, Any]]:
    """Feedback rows of different lengths and both labels, unbalanced (5 desirable of 8); completions of at most
    20 characters, so that summed log-probs stay where float32 resolves 1e-5."""
    return [{"prompt": row["prompt"], "completion": (row["chosen"] if i % 3 else row["rejected"])[:20],
             "label": bool(i % 3)} for i, row in enumerate(parity_rows(n))]  # fmt: skip


def kto_parity(case: str) -> dict[str, Any]:
    """Our KTO loss and metrics against TRL's `KTOTrainer.compute_loss` for one case of `KTO_CASES`.

    Args:
        case: a key of `KTO_CASES`.

    Returns:
        A benchmark entry (`bench.parity._entry`): ours, TRL's, the largest absolute difference over
        the loss and the metrics, whether the token ids (mismatched completions included) matched.
    """
    import trl
    from datasets import Dataset

    kind, beta, desirable_weight, undesirable_weight, noise = KTO_CASES[case]
    policy, tokenizer = build_tiny_llama()
    policy.train()
    reference = _perturbed(policy, scale=noise)
    if kind == "feedback":
        rows = feedback_parity_rows()
    else:
        rows = [{k: v for k, v in row.items() if k != "margin"} for row in parity_rows(4)]
    examples_count = len(rows) * (2 if kind == "preference" else 1)
    with tempfile.TemporaryDirectory() as out:
        config = _trl_config(trl.KTOConfig, out, beta=beta, desirable_weight=desirable_weight,
                             undesirable_weight=undesirable_weight, per_device_train_batch_size=examples_count)
        trainer = trl.KTOTrainer(model=policy, ref_model=reference, args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
        theirs_examples = [trainer.train_dataset[i] for i in range(examples_count)]
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, trainer.data_collator(theirs_examples)).item()
        metrics = trainer._metrics["train"]
        theirs = {"loss": loss} | {name: float(metrics[name][-1]) for name in KTO_STATS}

    hp = KTOHyperparameters(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                            batch_size=examples_count, max_length=128, max_prompt_length=64)  # fmt: skip
    examples = tokenize_feedback(rows, tokenizer, max_length=128, max_prompt_length=64, group_size=hp.batch_size)
    same_tokens = all(
        (e.prompt_ids, e.completion_ids, e.kl_completion_ids, e.desirable)
        == (t["prompt_ids"], t["completion_ids"], t["KL_completion_ids"], t["label"])
        for e, t in zip(examples, theirs_examples, strict=True)
    )
    stats = accumulate_gradients(policy, FeedbackReference(model=reference), examples, [list(range(len(examples)))],
                                 tokenizer.pad_token_id, hp, torch.device("cpu"), 8, backward=None)  # fmt: skip
    ours = dict(zip(("loss", *TRAIN_METRICS[1:]), stats.tolist(), strict=True))
    what = (f"{kind} rows ({examples_count} examples), beta={beta}, desirable_weight={desirable_weight}, "
            f"undesirable_weight={undesirable_weight}; z_ref={ours['kl']:.4g}"
            + (" (the mean log-ratio of the mismatched pairs is negative: clamped)" if ours["kl"] == 0 else ""))
    return _entry(f"parity/kto_{case}", ours, theirs, same_tokens, trl.__version__, what)
