"""A clock the test moves by hand, for code that takes an injectable monotonic clock."""

from __future__ import annotations


class ManualClock:
    """Monotonic seconds that change only when the test calls :meth:`advance` or :meth:`set`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds
        return self.now

    def set(self, now: float) -> float:
        assert now >= self.now, "a monotonic clock never goes back"
        self.now = now  # exactly: the code under test may compute the same sum
        return now
