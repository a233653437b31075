"""Does our DAPO overlong shaping equal TRL's ``get_soft_overlong_punishment`` on sampled completions?

    .venv/bin/python bench/parity_dapo.py

`builtin:tiny-llama` samples completions of up to L_max = 12 tokens (EOS included when sampled, as
TRL counts a completion's ids); our `shaped_scores` (the path GRPO training takes) adds the penalty
to zero rewards, and TRL's reward function rates the same token id lists. TRL has no dynamic
sampling (no group filter in its GRPOTrainer), so only the shaping is compared. Tolerance: 1e-5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from trainers.models.tiny import build_tiny_llama  # noqa: E402
from trainers.rl.dynamic_sampling import shaped_scores  # noqa: E402
from trainers.rl.generation.hf import HFBackend  # noqa: E402
from trainers.rl.online import completion_seeds, sample_rollout  # noqa: E402
from trainers.rl.rewards import RewardScores  # noqa: E402
from trainers.spec.config import GRPOHyperparameters  # noqa: E402

TOLERANCE = 1e-5
MAX_NEW_TOKENS, BUFFER = 12, 6


def overlong_parity(rows: int = 64) -> dict[str, Any]:
    """Our overlong penalty against TRL's soft overlong punishment on `rows` sampled completions.

    Returns:
        A benchmark entry: the mean penalties, the largest difference, and how many completions fell
        in the buffer (the check needs some there, and some before it).
    """
    from trl.rewards import get_soft_overlong_punishment

    model, tokenizer = build_tiny_llama()
    hp = GRPOHyperparameters(max_new_tokens=MAX_NEW_TOKENS, overlong_buffer=BUFFER, max_prompt_length=16,
                             max_length=64)  # fmt: skip
    prompts = [tokenizer(p)["input_ids"] for p in ["Hello", "Say something", "Write", "Go"]]
    ids = [prompts[i % len(prompts)] for i in range(rows)]
    backend = HFBackend.of(model, tokenizer, hp)
    rollout = sample_rollout(backend, ids, hp, row_seeds=completion_seeds(0, 1, range(rows), 1))
    zero = torch.zeros(rows)
    ours = shaped_scores(RewardScores(rewards=zero, per_grader={}, errors=[], rows_with_errors=0), rollout, hp).rewards
    completion_ids = [row[: int(n)].tolist() for row, n in zip(rollout.response_ids, rollout.response_lengths,
                                                              strict=True)]  # fmt: skip
    theirs = torch.tensor(get_soft_overlong_punishment(MAX_NEW_TOKENS, BUFFER)(completion_ids=completion_ids))
    diff = float((ours - theirs).abs().max())
    lengths = rollout.response_lengths
    import trl

    return {
        "name": "parity/dapo_overlong", "units": "reward",
        "what": f"overlong penalty, L_max={MAX_NEW_TOKENS}, L_cache={BUFFER}, {rows} sampled completions",
        "ours": float(ours.mean()), "trl": float(theirs.mean()), "ratio": None, "max_abs_diff": diff,
        "in_buffer": int(((lengths > MAX_NEW_TOKENS - BUFFER) & (lengths <= MAX_NEW_TOKENS)).sum()),
        "before_buffer": int((lengths <= MAX_NEW_TOKENS - BUFFER).sum()), "same_token_ids": True,
        "tolerance": TOLERANCE, "pass": diff <= TOLERANCE, "trl_version": trl.__version__,
    }  # fmt: skip


if __name__ == "__main__":
    entry = overlong_parity()
    print(json.dumps(entry, indent=1))
    sys.exit(0 if entry["pass"] else 1)
