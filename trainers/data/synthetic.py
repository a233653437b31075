"""Synthetic preference rows with an easy, learnable preference (torch-free).

Chosen responses are upper-case letters, rejected ones lower-case letters, both random, after a
random lower-case prompt. `builtin:tiny-llama` learns to prefer upper case within a few dozen DPO
steps, which makes these rows a quick end-to-end check that training really learns.
"""

from __future__ import annotations

import random
import string
from typing import Any


def uppercase_preference_rows(
    n: int, *, seed: int = 0, conversational: bool = False, response_length: int = 8
) -> list[dict[str, Any]]:
    """Make `n` canonical preference rows where the chosen response is upper case.

    Args:
        n: number of rows.
        seed: seed of the private random generator (the global one is untouched).
        conversational: message-list rows (a user turn, then one assistant message each) instead
            of plain strings.
        response_length: letters in each response.

    Returns:
        Rows ``{"prompt", "chosen", "rejected"}``.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        prompt = "say: " + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
        chosen = "".join(rng.choices(string.ascii_uppercase, k=response_length))
        rejected = "".join(rng.choices(string.ascii_lowercase, k=response_length))
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt + "\n", "chosen": chosen, "rejected": rejected})
    return rows
