"""The operators of one decoding step of the benchmark model, timed alone: can any be made cheaper?

    .venv/bin/python bench/decode_ops.py [--rows 16] [--keys 70] [--threads 1]

Shapes are those of `bench/trainers_vs_trl.py`'s GRPO decoding (`bench.common.build_models`: hidden
256, 8 query heads and 4 key/value heads of 32, MLP 688), `rows` rows, one query over `keys` cached
keys. Timed, best of 5 medians of 300 calls each, in µs per call:

- attention for one query: SDPA with grouped-query heads (``enable_gqa``) and a boolean mask, SDPA
  over repeated key/value heads with a boolean or an additive mask, and two `matmul`s and a softmax;
- the projections as the model runs them (q, k, v apart; gate and up apart) against fused
  (q, k and v as one product; gate and up as one), as engines such as vLLM lay them out.

Printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP = 256, 8, 4, 32, 688


def microseconds(fn: Callable[[], object], calls: int = 300, rounds: int = 5) -> float:
    """Best over `rounds` of the median µs per call of `calls` calls, after a warm-up."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times))
    return round(1e6 * best, 1)


def attention(rows: int, keys: int) -> dict[str, float]:
    """µs per call of each way to attend one query per row over `keys` cached keys (5 padded)."""
    q = torch.randn(rows, HEADS, 1, HEAD_DIM)
    k, v = torch.randn(rows, KV_HEADS, keys, HEAD_DIM), torch.randn(rows, KV_HEADS, keys, HEAD_DIM)
    groups = HEADS // KV_HEADS
    k_rep, v_rep = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    allowed = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    allowed[..., :5] = False  # left padding
    additive = torch.zeros(rows, 1, 1, keys).masked_fill(~allowed, float("-inf"))

    def by_hand() -> torch.Tensor:
        grouped = q.view(rows, KV_HEADS, groups, HEAD_DIM)
        scores = torch.matmul(grouped, k.transpose(-1, -2)) * HEAD_DIM**-0.5 + additive.view(rows, 1, 1, keys)
        return torch.matmul(scores.softmax(-1), v)

    return {
        "sdpa_gqa_bool_mask": microseconds(lambda: F.scaled_dot_product_attention(q, k, v, allowed, enable_gqa=True)),
        "sdpa_repeated_bool_mask": microseconds(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, allowed)),
        "sdpa_repeated_additive_mask": microseconds(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, additive)),
        "matmul_softmax_matmul": microseconds(by_hand),
    }


def projections(rows: int) -> dict[str, float]:
    """µs per call of the q/k/v and gate/up products, apart and fused."""
    x = torch.randn(rows, HIDDEN)
    w = {n: torch.randn(n, HIDDEN) for n in (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, 2 * MLP, MLP)}
    q_out, kv_out = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    qkv = torch.randn(q_out + 2 * kv_out, HIDDEN)
    return {
        "q_k_v_apart": microseconds(lambda: (F.linear(x, w[q_out]), F.linear(x, w[kv_out]), F.linear(x, w[kv_out]))),
        "qkv_fused": microseconds(lambda: F.linear(x, qkv)),
        "gate_up_apart": microseconds(lambda: (F.linear(x, w[MLP]), F.linear(x, w[MLP]))),
        "gate_up_fused": microseconds(lambda: F.linear(x, w[2 * MLP])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--keys", type=int, default=70)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"name": "generation/decode_ops", "rows": args.rows, "keys": args.keys, "threads": args.threads,
                      "torch": torch.__version__, "attention_us": attention(args.rows, args.keys),
                      "projections_us": projections(args.rows)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
