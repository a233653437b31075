"""Do our reference-free preference losses equal TRL's on identical inputs? SimPO and ORPO.

    .venv/bin/python bench/parity.py   (runs these with the other parity checks)

SimPO is checked against TRL's ``CPOTrainer(loss_type="simpo", cpo_alpha=0)`` (TRL implements
SimPO inside CPO; ``cpo_alpha`` adds CPO's NLL term, which SimPO has not), ORPO against TRL's
``ORPOTrainer``; both live in ``trl.experimental`` in TRL 1.x. Each check builds
`builtin:tiny-llama`, hands the same rows and weights to TRL's trainer and to ours, and compares
TRL's ``compute_loss`` and logged metrics on one collated batch with our ``pair_losses_and_stats``
(no reference log-probs) on ours. Both sides tokenise the rows themselves; the token ids are
compared first. Tolerance: 1e-5 absolute (`bench.parity.TOLERANCE`).

ORPO's SFT term differs by definition: ours is the paper's ``−log π(y_w|x)/|y_w|`` (the mean NLL
of each chosen response, averaged over pairs); TRL's (like the ORPO authors' code) is the token
mean of the NLL over the prompt and the response of every chosen row of the batch. The check
therefore compares the odds-ratio part of the loss (the loss less its ``nll_loss``), every other
metric, and TRL's ``nll_loss`` against TRL's definition computed from our own log-probs.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from bench.parity import TOLERANCE, _entry, _trl_config, parity_rows
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.dpo import pair_losses_and_stats, train_metrics
from trainers.models.tiny import build_tiny_llama
from trainers.ops.logprobs import sequence_logprobs
from trainers.spec.config import DPOHyperparameters, ORPOHyperparameters

SIMPO_CASES = {  # name → (β, γ, label smoothing)
    "simpo": (2.0, 0.5, 0.0),
    "simpo_smoothed": (2.5, 1.4, 0.1),
}
SHARED_STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")  # fmt: skip
ORPO_STATS = ("log_odds_ratio", "log_odds_chosen")
__all__ = ["SIMPO_CASES", "TOLERANCE", "orpo_parity", "simpo_parity"]


def _trl_side(trainer_cls, config, policy, tokenizer, rows, names) -> tuple[dict[str, float], list[dict]]:
    """TRL's loss and logged metrics (`names`) on one batch of all `rows`, and its tokenised examples."""
    from datasets import Dataset

    trainer = trainer_cls(model=policy, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    batch = trainer.data_collator(examples)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    stored = trainer._stored_metrics["train"]
    return {"loss": loss} | {name: float(stored[name][-1]) for name in names}, examples


def _our_side(policy, tokenizer, rows, hp) -> tuple[dict[str, float], list, Any]:
    """Our per-pair losses and statistics on the same rows, averaged; our pairs and batch."""
    pairs = tokenize_pairs(rows, tokenizer, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length)
    batch = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=8)  # grouped by length, as in training
    with torch.no_grad():
        losses, stats = pair_losses_and_stats(policy, batch, None, hp)  # no reference
    means = dict(zip(train_metrics(hp.loss_type), stats.mean(dim=1).tolist(), strict=True))
    ours = {"loss": losses.mean().item()} | {name: means[name] for name in SHARED_STATS}
    for name in ("nll_loss", *ORPO_STATS):
        if f"train/{name}" in means:
            ours[name] = means[f"train/{name}"]
    return ours, pairs, batch


def _same_tokens(pairs, examples) -> bool:
    return all(
        (p.prompt_ids + p.chosen_ids, p.prompt_ids + p.rejected_ids) == (e["chosen_input_ids"], e["rejected_input_ids"])
        for p, e in zip(pairs, examples, strict=True)
    )


def simpo_parity(case: str) -> dict[str, Any]:
    """Our ``loss_type: "simpo"`` against TRL's ``CPOTrainer(loss_type="simpo", cpo_alpha=0)``.

    Args:
        case: a key of `SIMPO_CASES`.

    Returns:
        A benchmark entry (`bench.parity._entry`): the loss and metrics of both, their largest difference.
    """
    import trl
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    beta, gamma, smoothing = SIMPO_CASES[case]
    policy, tokenizer = build_tiny_llama()
    policy.train()
    rows = [{k: v for k, v in row.items() if k != "margin"} for row in parity_rows()]
    with tempfile.TemporaryDirectory() as out:
        config = _trl_config(CPOConfig, out, loss_type="simpo", beta=beta, simpo_gamma=gamma, cpo_alpha=0.0,
                             label_smoothing=smoothing)  # fmt: skip
        theirs, examples = _trl_side(CPOTrainer, config, policy, tokenizer, rows, SHARED_STATS)
    hp = DPOHyperparameters(loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=smoothing,
                            max_length=128, max_prompt_length=64)  # fmt: skip
    ours, pairs, _ = _our_side(policy, tokenizer, rows, hp)
    what = (f"ours loss_type='simpo' β={beta} simpo_gamma={gamma} label_smoothing={smoothing}; TRL CPOTrainer "
            f"loss_type='simpo' cpo_alpha=0, the same β, γ and ε")  # fmt: skip
    return _entry(f"parity/{case}", ours, theirs, _same_tokens(pairs, examples), trl.__version__, what)


def orpo_parity(beta: float = 0.1) -> dict[str, Any]:
    """Our ORPO (`ORPOJob`'s loss) against TRL's ``ORPOTrainer``; see the module docstring for the SFT term.

    Args:
        beta: λ, the odds-ratio weight (TRL's ``beta``).

    Returns:
        A benchmark entry comparing ``or_loss`` (loss less nll_loss), the rewards, log-probs and log odds,
        and ``trl_nll_loss`` (TRL's SFT term, recomputed from our log-probs); ``nll_loss`` of both is shown.
    """
    import trl
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    policy, tokenizer = build_tiny_llama()
    policy.train()
    rows = [{k: v for k, v in row.items() if k != "margin"} for row in parity_rows()]
    with tempfile.TemporaryDirectory() as out:
        config = _trl_config(ORPOConfig, out, beta=beta)
        theirs, examples = _trl_side(ORPOTrainer, config, policy, tokenizer, rows,
                                     (*SHARED_STATS, "nll_loss", *ORPO_STATS))  # fmt: skip
    hp = ORPOHyperparameters(beta=beta, max_length=128, max_prompt_length=64)
    ours, pairs, batch = _our_side(policy, tokenizer, rows, hp)
    # TRL's SFT term from our own log-probs: every real token of the chosen rows but the first, one token mean.
    b = batch.num_pairs
    with torch.no_grad():
        _, total = sequence_logprobs(policy, batch.input_ids[:b], batch.attention_mask[:b],
                                             batch.attention_mask[:b])  # fmt: skip
    ours["trl_nll_loss"] = -(total.sum() / batch.attention_mask[:b, 1:].sum()).item()
    theirs["trl_nll_loss"] = theirs["nll_loss"]
    ours["or_loss"] = ours["loss"] - ours["nll_loss"]
    theirs["or_loss"] = theirs["loss"] - theirs["nll_loss"]
    compared = ("or_loss", *SHARED_STATS, *ORPO_STATS, "trl_nll_loss")
    what = (f"ours ORPOJob β(λ)={beta}; TRL ORPOTrainer beta={beta}; the odds-ratio part of the loss, the metrics, "
            "and TRL's SFT term (prompt and response tokens, batch token mean) recomputed from our log-probs; "
            "our own SFT term is the paper's per-response mean")  # fmt: skip
    return _entry("parity/orpo", ours, theirs, _same_tokens(pairs, examples), trl.__version__, what, compared)
