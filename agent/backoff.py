"""Exponential backoff with jitter: how long to wait before the next attempt.

One formula for every retry loop of the agent (the storage's retried calls, the model
client's retried requests); each caller keeps its own base, cap and jitter, and its own
idea of when to give up. Pure: no sleeping and no I/O here, and the random source can be
injected, so the delays are testable.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_seconds"]


def backoff_seconds(
    retry: int,
    *,
    base_seconds: float,
    cap_seconds: float,
    floor: float = 0.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """The delay before retry number ``retry`` (1, 2, …), in seconds.

    The ceiling is ``base_seconds × 2^(retry - 1)``, never above ``cap_seconds``; the
    delay is drawn uniformly between ``floor × ceiling`` and the ceiling, from ``rng()``
    (a number in [0, 1)). ``floor`` 0 is "full jitter" (the model client), 0.5 keeps at
    least half the ceiling (the storage's calls).
    """
    ceiling = min(cap_seconds, base_seconds * 2.0 ** (retry - 1))
    return ceiling * (floor + (1.0 - floor) * rng())
