"""The one backoff formula: ceilings, the cap, the jitter floor, the injected random source."""

from __future__ import annotations

import random

import pytest

from agent.backoff import backoff_seconds


def test_ceilings_double_from_the_base_up_to_the_cap() -> None:
    ceilings = [
        backoff_seconds(n, base_seconds=0.1, cap_seconds=2.0, rng=lambda: 1.0) for n in range(1, 8)
    ]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert backoff_seconds(3, base_seconds=0.2, cap_seconds=5, rng=lambda: 0.0) == 0.0
    assert backoff_seconds(3, base_seconds=0.2, cap_seconds=5, rng=lambda: 0.5) == pytest.approx(
        0.4
    )


def test_a_floor_keeps_that_share_of_the_ceiling() -> None:
    lowest = backoff_seconds(2, base_seconds=0.1, cap_seconds=2, floor=0.5, rng=lambda: 0.0)
    highest = backoff_seconds(2, base_seconds=0.1, cap_seconds=2, floor=0.5, rng=lambda: 1.0)
    assert (lowest, highest) == pytest.approx((0.1, 0.2))


def test_the_floor_half_draws_as_the_storage_did_with_uniform() -> None:
    # The storage's delay was ``ceiling × random.uniform(0.5, 1.0)``: the same numbers
    # from the same seed, so moving it here changed nothing.
    mine, theirs = random.Random(7), random.Random(7)
    for retry in range(1, 12):
        ceiling = min(2.0, 0.1 * 2 ** (retry - 1))
        expected = ceiling * theirs.uniform(0.5, 1.0)
        got = backoff_seconds(retry, base_seconds=0.1, cap_seconds=2.0, floor=0.5, rng=mine.random)
        assert got == expected


def test_the_random_source_is_asked_once_per_delay() -> None:
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.25)
        return 0.25

    delays = [backoff_seconds(n, base_seconds=1, cap_seconds=100, rng=rng) for n in (1, 2, 3)]
    assert delays == pytest.approx([0.25, 0.5, 1.0]) and len(draws) == 3


def test_the_default_source_jitters_within_bounds() -> None:
    delays = [backoff_seconds(2, base_seconds=0.2, cap_seconds=5, floor=0.5) for _ in range(200)]
    assert all(0.2 <= delay <= 0.4 for delay in delays) and len(set(delays)) > 100
