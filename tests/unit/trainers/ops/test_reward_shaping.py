"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) at and around its boundaries, by hand."""

import pytest
import torch

from trainers.ops.reward_shaping import overlong_penalty


def naive_overlong(length: int, max_length: int, buffer: int, factor: float) -> float:
    """Eq. 13 as written, one completion at a time."""
    expected = max_length - buffer
    if length <= expected:
        return 0.0
    if length <= max_length:
        return factor * (expected - length) / buffer
    return -factor


def test_overlong_penalty_at_the_boundaries_by_hand():
    # L_max = 20, L_cache = 4: free up to 16 tokens, then −1/4 per token, −1 at 20 and beyond.
    lengths = torch.tensor([0, 1, 15, 16, 17, 18, 19, 20, 21, 40])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, max_length=20, buffer=4), expected)


def test_overlong_penalty_scales_with_the_factor():
    lengths = torch.tensor([16, 17, 20, 25])
    got = overlong_penalty(lengths, max_length=20, buffer=4, factor=0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.125, -0.5, -0.5]))
    assert overlong_penalty(lengths, max_length=20, buffer=4, factor=0.0).abs().sum() == 0


@pytest.mark.parametrize(("max_length", "buffer", "factor"), [(64, 16, 1.0), (7, 7, 2.0), (5, 1, 0.3), (100, 33, 1.0)])
def test_overlong_penalty_equals_the_naive_formula(max_length, buffer, factor):
    lengths = torch.arange(0, max_length + 5)
    got = overlong_penalty(lengths, max_length=max_length, buffer=buffer, factor=factor)
    expected = torch.tensor([naive_overlong(n, max_length, buffer, factor) for n in lengths.tolist()])
    torch.testing.assert_close(got, expected)
    assert got.dtype == torch.float32 and got.shape == lengths.shape


@pytest.mark.parametrize("buffer", [0, -1, 21])
def test_overlong_penalty_refuses_a_buffer_outside_the_length(buffer):
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(torch.tensor([3]), max_length=20, buffer=buffer)
