"""A run's pace: the warm-up left out, the smoothed rate, the time left, tokens per second, a new start."""

import pytest

from worker.pace import Pace


def steady(pace: Pace, *, start: float, first: int, last: int, seconds: float, tokens: int | None = None) -> float:
    """Observe steps first..last, `seconds` apart from `start`; return the time of the last."""
    now = start
    for step in range(first, last + 1):
        pace.observe(now, step, None if tokens is None else float(step * tokens))
        now += seconds
    return now - seconds


def test_the_first_step_is_the_start_so_the_warm_up_does_not_count():
    pace = Pace()
    pace.observe(100.0, 1)  # 100 s of loading and a slow first step
    assert pace.estimate(100.0, 10) is None  # one observation measures nothing yet
    now = steady(pace, start=101.0, first=2, last=5, seconds=1.0)
    estimate = pace.estimate(now, 10)
    assert estimate.steps_per_second == pytest.approx(1.0)  # not 5 steps / 104 s
    assert estimate.seconds_left == pytest.approx(5.0)  # steps 6..10
    assert pace.estimate(now + 2.0, 10).seconds_left == pytest.approx(3.0)  # counted from the last step seen
    assert pace.estimate(now + 60.0, 10).seconds_left == 0.0
    assert pace.estimate(now, None).seconds_left is None  # the total is unknown
    assert pace.estimate(now, 5).seconds_left == 0.0  # at the last step


def test_a_change_of_pace_shows_within_the_time_constant():
    pace = Pace()
    now = steady(pace, start=0.0, first=1, last=61, seconds=1.0)  # one step a second for a minute
    for step in range(62, 662):  # then two a second for five minutes
        now += 0.5
        pace.observe(now, step)
    rate = pace.estimate(now, None).steps_per_second
    overall = (661 - 1) / now  # the plain average since the start: 1.83
    assert rate > 1.95 and abs(rate - 2) < abs(overall - 2) / 4


def test_steps_of_unequal_length_average_to_the_true_rate():
    # PPO-like: a rollout's step of 10 s, then 3 update steps of 1 s: 4 steps per 13 s.
    pace, now, step, rates = Pace(), 50.0, 1, []
    pace.observe(now, step)
    for _ in range(60):
        for seconds in (10.0, 1.0, 1.0, 1.0):
            now, step = now + seconds, step + 1
            pace.observe(now, step)
            rates.append(pace.estimate(now, None).steps_per_second)
    assert all(abs(rate - 4 / 13) < 0.06 * 4 / 13 for rate in rates[-40:])


def test_tokens_per_second_come_from_the_cumulative_token_count():
    pace = Pace()
    now = steady(pace, start=0.0, first=1, last=6, seconds=2.0, tokens=300)
    assert pace.estimate(now, 6).tokens_per_second == pytest.approx(150.0)
    plain = Pace()
    now = steady(plain, start=0.0, first=1, last=6, seconds=2.0)
    assert plain.estimate(now, 6).tokens_per_second is None


def test_a_step_reported_again_starts_the_measurement_over():
    pace = Pace()
    now = steady(pace, start=0.0, first=1, last=8, seconds=1.0)
    pace.observe(now + 30.0, 5)  # a resumed run reports step 5 again
    assert pace.estimate(now + 30.0, 10) is None
    pace.observe(now + 34.0, 7)
    assert pace.estimate(now + 34.0, 10).steps_per_second == pytest.approx(0.5)
    pace.reset()
    assert pace.estimate(now + 34.0, 10) is None
