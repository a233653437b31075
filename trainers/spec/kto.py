"""Hyperparameters of Kahneman-Tversky Optimization (torch-free): the `hyperparameters` of a KTO job.

KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306) learns from completions labelled
desirable or undesirable, one at a time (`trainers.ops.unpaired_losses`). Defaults follow the paper
and TRL's `KTOConfig` (β 0.1, both weights 1, learning rate 1e-6).
"""

from __future__ import annotations

from pydantic import Field

from trainers.spec.hyperparameters import LoopHyperparameters


class KTOHyperparameters(LoopHyperparameters):
    """Hyperparameters of KTO on feedback rows (or preference pairs, read as two feedback rows each).

    `batch_size` counts examples (labelled completions) per optimizer step. The reference point
    z_ref is estimated once per optimizer step, over all the step's examples (every micro-batch and
    process), from mismatched pairs: each example's prompt with another example's completion. The
    partners are fixed before training, as in TRL: the examples, in dataset order, are cut into
    consecutive groups of `batch_size`, and each takes the completion of the example before it in
    its group (the first takes the last's). The step's loss is the weighted sum of its examples'
    losses divided by their number, so neither z_ref nor the loss depends on micro-batching or on
    the number of processes.
    """

    learning_rate: float = Field(
        1e-6, gt=0, le=1, description="Peak AdamW learning rate (TRL's KTO default 1e-6; a tiny model needs ~1e-3)."
    )
    batch_size: int = Field(
        8, ge=2, le=1024,
        description="Examples (labelled completions) per optimizer step, split across gradient accumulation; at "
                    "least 2, since the KL estimate pairs each prompt with another example's completion.",
    )
    beta: float = Field(
        0.1, gt=0, le=100,
        description="β: how sharply the loss turns on the implicit reward's distance from the reference point "
                    "(and the strength of the implicit KL penalty; KTO paper and TRL: 0.1).",
    )
    desirable_weight: float = Field(
        1.0, gt=0, le=100,
        description="λ_D, the weight of desirable examples' losses. With unequal counts, the paper suggests "
                    "λ_D·n_desirable / (λ_U·n_undesirable) in [1, 4/3].",
    )
    undesirable_weight: float = Field(1.0, gt=0, le=100, description="λ_U, the weight of undesirable examples' losses.")
    precompute_ref_logprobs: bool = Field(
        True,
        description="Compute the reference log-probs (of the examples and of their mismatched pairs) in one pass "
                    "before training, so the reference model is not in memory while training. Results equal the "
                    "on-the-fly path.",
    )
