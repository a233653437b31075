import itertools
import random

import pytest
import torch

from trainers.data.batching import BatchOrder, length_buckets, map_buckets, split_micro_batches


def test_each_epoch_visits_every_row_once_in_a_seeded_order():
    order = BatchOrder(num_rows=10, batch_size=4, seed=3)
    assert order.steps_per_epoch == 3
    epoch0 = [order.step_indices(s) for s in (1, 2, 3)]
    epoch1 = [order.step_indices(s) for s in (4, 5, 6)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(sum(epoch0, [])) == list(range(10)) == sorted(sum(epoch1, []))
    assert epoch0 != epoch1
    fresh = BatchOrder(num_rows=10, batch_size=4, seed=3)
    assert [fresh.step_indices(s) for s in (5, 2)] == [epoch1[1], epoch0[1]]  # random access, same answer
    assert BatchOrder(num_rows=10, batch_size=4, seed=4).step_indices(1) != epoch0[0]


def test_micro_batches_split_evenly_and_never_empty():
    assert split_micro_batches(list(range(8)), 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert split_micro_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_micro_batches([5, 6], 4) == [[5], [6]]
    assert split_micro_batches([1, 2, 3], 1) == [[1, 2, 3]]


def brute_force_cost(lengths, overhead):
    """Least cost over every split of the sorted rows into consecutive groups."""
    ordered = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        groups, start = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(ordered[start:i])
                start = i
        groups.append(ordered[start:])
        best = min(best, sum(len(g) * g[-1] + overhead for g in groups))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_length_buckets_cover_every_row_once_at_least_cost(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 9))]
    overhead = rng.choice([0, 8, 30, 500])
    groups = length_buckets(lengths, overhead)
    assert sorted(i for rows, _ in groups for i in rows) == list(range(len(lengths)))
    assert all(width == max(lengths[i] for i in rows) for rows, width in groups)
    cost = sum(len(rows) * width + overhead for rows, width in groups)
    assert cost == brute_force_cost(lengths, overhead)


def test_length_buckets_keep_one_group_when_splitting_costs_more():
    assert length_buckets([10, 11, 12, 12], 100) == [([0, 1, 2, 3], 12)]
    assert length_buckets([100, 5, 6, 101], 20) == [([1, 2], 6), ([0, 3], 101)]


def test_map_buckets_returns_each_rows_value_in_the_original_order():
    rows = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0], [4, 5, 6, 7], [8, 9, 1, 0]])  # (4, 4) right-padded
    calls = []

    def row_sums(x):
        calls.append(tuple(x.shape))
        return x.sum(dim=1)

    buckets = [(torch.tensor([1, 0]), 2), (torch.tensor([3, 2]), 4)]
    assert map_buckets(row_sums, buckets, rows).tolist() == [3, 3, 22, 18]
    assert calls == [(2, 2), (2, 4)]  # each group cut to its width
    assert map_buckets(row_sums, [(torch.arange(4), 4)], rows).tolist() == [3, 3, 22, 18]
    assert map_buckets(row_sums, [], rows).tolist() == [3, 3, 22, 18]


@pytest.mark.parametrize("seed", range(4))
def test_length_buckets_respect_a_row_bound_at_least_cost(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(2, 9))]
    for max_rows in (1, 2, 3):
        groups = length_buckets(lengths, 30, max_rows=max_rows)
        assert sorted(i for rows, _ in groups for i in rows) == list(range(len(lengths)))
        assert all(len(rows) <= max_rows for rows, _ in groups)
        unbounded_cost = brute_force_cost(lengths, 30)
        assert sum(len(rows) * width + 30 for rows, width in groups) >= unbounded_cost
    assert length_buckets([10, 11, 12, 12], 100, max_rows=2) == [([0, 1], 11), ([2, 3], 12)]
