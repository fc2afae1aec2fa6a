"""How an object joins an upload (``plan_append``): copied server-side or streamed.

Every part but the last must be at least S3's minimum, and nobody knows which part is the
last, so every part a plan makes — the buffer shipped before a copy, each copied range —
must be that large; the rest is streamed.
"""

from __future__ import annotations

import pytest

from agent._compat import MIB
from agent.storage import MAX_PARTS, MIN_PART_BYTES, StorageSettings, min_part_size
from agent.storage.base import GIB, MAX_PART_BYTES
from agent.storage.s3.upload import AppendPlan, plan_append

SETTINGS = StorageSettings()
KIB = 1024


@pytest.mark.parametrize(
    ("size", "pending", "expected"),
    [
        (0, 0, AppendPlan(stream=0)),
        (KIB, 0, AppendPlan(stream=KIB)),
        (5 * MIB - 1, 0, AppendPlan(stream=5 * MIB - 1)),
        (5 * MIB, 0, AppendPlan(stream=0, copies=((0, 5 * MIB),))),
        (7 * MIB, 0, AppendPlan(stream=0, copies=((0, 7 * MIB),))),
        # a big buffer is shipped first, then the object copied
        (7 * MIB, 5 * MIB, AppendPlan(stream=0, copies=((0, 7 * MIB),))),
        (5 * MIB, 8 * MIB, AppendPlan(stream=0, copies=((0, 5 * MIB),))),
        # a small buffer: the object's head fills it to 5 MiB when the rest can be a part
        (7 * MIB, 5 * MIB - 1, AppendPlan(stream=1, copies=((1, 7 * MIB),))),
        (10 * MIB, KIB, AppendPlan(stream=5 * MIB - KIB, copies=((5 * MIB - KIB, 10 * MIB),))),
        # ... and streams all of it when it cannot
        (7 * MIB, KIB, AppendPlan(stream=7 * MIB)),
        (10 * MIB - KIB - 1, KIB, AppendPlan(stream=10 * MIB - KIB - 1)),
        (5 * MIB, 1, AppendPlan(stream=5 * MIB)),
        (KIB, 7 * MIB, AppendPlan(stream=KIB)),
    ],
)
def test_copied_only_as_parts_of_at_least_5_mib(
    size: int, pending: int, expected: AppendPlan
) -> None:
    assert plan_append(size, pending, 1, SETTINGS) == expected


def test_a_copy_over_the_part_limit_is_cut_into_balanced_ranges() -> None:
    size = 2 * MAX_PART_BYTES + 7
    plan = plan_append(size, 0, 1, SETTINGS)
    assert plan.stream == 0 and len(plan.copies) == 3
    lengths = [end - start for start, end in plan.copies]
    assert max(lengths) <= MAX_PART_BYTES and max(lengths) - min(lengths) <= 1
    assert plan.copies[0][0] == 0 and plan.copies[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(plan.copies, plan.copies[1:], strict=False))
    assert plan_append(MAX_PART_BYTES, 0, 1, SETTINGS).copies == ((0, MAX_PART_BYTES),)


def test_ranges_follow_copy_part_bytes_and_never_go_below_the_minimum() -> None:
    small = StorageSettings(copy_part_bytes=10 * MIB)
    assert plan_append(23 * MIB, 0, 1, small).copies == (
        (0, 23 * MIB // 3 + 1),
        (23 * MIB // 3 + 1, 2 * 23 * MIB // 3 + 1),
        (2 * 23 * MIB // 3 + 1, 23 * MIB),
    )
    # 11 MiB in ranges of at most 5 MiB would need one under 5 MiB: streamed instead
    tight = StorageSettings(copy_part_bytes=5 * MIB)
    assert plan_append(11 * MIB, 0, 1, tight) == AppendPlan(stream=11 * MIB)
    assert len(plan_append(10 * MIB, 0, 1, tight).copies) == 2


def test_the_minimum_doubles_with_the_part_number_so_parts_never_run_out() -> None:
    assert min_part_size(1) == min_part_size(1000) == MIN_PART_BYTES
    assert min_part_size(1001) == 10 * MIB and min_part_size(MAX_PARTS) == 5 * MIB << 9
    # 10,000 parts each at their minimum hold ~4.9 TiB, close to S3's 5 TiB object limit
    assert sum(min_part_size(n) for n in range(1, MAX_PARTS + 1)) > 4.8 * 1024 * GIB
    assert plan_append(7 * MIB, 0, 1001, SETTINGS) == AppendPlan(stream=7 * MIB)
    assert plan_append(10 * MIB, 0, 1001, SETTINGS).copies == ((0, 10 * MIB),)
    # 7 MiB pending are too short for part 1,001: the head fills them to 10 MiB, the
    # rest is copied when it reaches 10 MiB too
    assert plan_append(14 * MIB, 7 * MIB, 1001, SETTINGS) == AppendPlan(
        stream=3 * MIB, copies=((3 * MIB, 14 * MIB),)
    )
    assert plan_append(12 * MIB, 7 * MIB, 1001, SETTINGS) == AppendPlan(stream=12 * MIB)
    # the copy would be part 10,001
    assert plan_append(7 * GIB, 0, MAX_PARTS + 1, SETTINGS) == AppendPlan(stream=7 * GIB)
    assert plan_append(7 * GIB, 5 * GIB, MAX_PARTS, SETTINGS) == AppendPlan(stream=7 * GIB)


def test_copy_part_bytes_must_be_a_size_s3_accepts() -> None:
    with pytest.raises(ValueError, match="copy_part_bytes"):
        StorageSettings(copy_part_bytes=5 * MIB - 1)
    with pytest.raises(ValueError, match="copy_part_bytes"):
        StorageSettings(copy_part_bytes=MAX_PART_BYTES + 1)
