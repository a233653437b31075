from trainers.batching import BatchOrder, split_micro_batches


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
