"""``train/num_tokens``: a step's rows counted, derived from the data order on a resume, or kept in a checkpoint."""

from trainers.data.batching import BatchOrder
from trainers.spec.results import NUM_TOKENS_METRIC as METRIC
from trainers.token_count import TokenCount, tokens_through


def test_tokens_through_counts_the_rows_of_every_step_so_far():
    lengths = [3, 5, 7, 11, 13]
    order = BatchOrder(num_rows=5, batch_size=2, seed=4)
    total = 0
    for step in range(1, 8):
        total += sum(lengths[i] for i in order.step_indices(step))
        assert tokens_through(order, lengths, step) == total
    assert tokens_through(order, lengths, 0) == 0 and tokens_through(order, lengths, 6) == 2 * sum(lengths)


def test_a_count_resumed_at_any_step_continues_as_the_uninterrupted_one():
    lengths = [3, 5, 7, 11, 13]
    order = BatchOrder(num_rows=5, batch_size=2, seed=4)
    straight = TokenCount.through(order, lengths, 0)
    reported = [straight.add_rows(order.step_indices(step))[METRIC] for step in range(1, 8)]
    assert reported[-1] == 2 * sum(lengths) + sum(lengths[i] for i in order.step_indices(7))
    for stopped in range(1, 7):
        resumed = TokenCount.through(order, lengths, stopped)
        assert [resumed.add_rows(order.step_indices(s))[METRIC] for s in range(stopped + 1, 8)] == reported[stopped:]


def test_a_kept_count_continues_from_its_checkpoint_or_from_zero_without_one():
    count = TokenCount()
    assert count.add(40) == {METRIC: 40.0} and count.add(2) == {METRIC: 42.0}
    resumed = TokenCount()
    resumed.load_state_dict(count.state_dict())
    assert resumed.add(8) == {METRIC: 50.0}
    old = TokenCount()
    old.load_state_dict(None)
    assert old.add(8) == {METRIC: 8.0}
