"""Thousands of generated inputs per format, valid and hostile, cut at random points.

* The compiled splitters and the pure twin give identical bodies, ranges, record counts
  and errors (type, offset, message) for the same input and the same cutting.
* For either twin, how the input is cut changes nothing but streamed parts (and which
  bodies a failing call had completed); bounded MultiRecord bodies concatenate back to
  the input, each within the bound and the cap on records.

Half of the cases carry a cap on records (``max_records``), drawn from a generator of
their own so the cases drawn without it stay what they were.
"""

from __future__ import annotations

import importlib
import random
from collections import Counter
from types import ModuleType

import pytest

from tests.support.split import (
    MAGIC_BYTES,
    Outcome,
    cut,
    random_cuts,
    rio_frame,
    rio_record,
    split,
    tf_frame,
)

KINDS = ["Line", "RecordIO", "TFRecord", "None"]
STRATEGIES = ["MultiRecord", "SingleRecord"]


def _payload(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 3, 4, 7, 8, rng.randrange(0, 40), rng.randrange(0, 120)])
    if rng.random() < 0.15 and n >= 8:  # an aligned magic word: dmlc splits the record there
        at = 4 * rng.randrange(0, n // 4)
        return (rng.randbytes(at) + MAGIC_BYTES + rng.randbytes(n))[:n]
    return rng.randbytes(n)


def _line(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"\n",
            b"\r\n",
            b"x" * rng.randrange(0, 12) + b"\n",
            b"row," * rng.randrange(0, 30) + b"\r\n",
            bytes(rng.choice(b"ab\r") for _ in range(rng.randrange(0, 80))) + b"\n",
        ]
    )


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Damage the input now and then: flip a bit, truncate, splice, or add stray frames."""
    roll = rng.random()
    if not data or roll < 0.6:
        return data
    if roll < 0.75:
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if roll < 0.87:
        return data[: rng.randrange(len(data))]
    if roll < 0.94:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rio_frame(b"zz", rng.randrange(0, 8) & 3) + data[at:]
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randrange(1, 16)) + data[at:]


def generate(rng: random.Random, kind: str) -> bytes:
    count = rng.choice([0, 1, 2, rng.randrange(0, 12), rng.randrange(0, 30)])
    if kind == "Line":
        data = b"".join(_line(rng) for _ in range(count))
        if rng.random() < 0.3:
            data += b"tail" * rng.randrange(0, 4)
        return _mutate(rng, data) if rng.random() < 0.1 else data
    if kind == "RecordIO":
        frames = []
        for _ in range(count):
            if rng.random() < 0.2:  # a record split by hand into parts
                n = rng.randrange(2, 5)
                flags = [1] + [2] * (n - 2) + [3]
                frames += [rio_frame(_payload(rng), f) for f in flags]
            else:
                frames.append(rio_record(_payload(rng)))
        return _mutate(rng, b"".join(frames))
    if kind == "TFRecord":
        return _mutate(rng, b"".join(tf_frame(_payload(rng)) for _ in range(count)))
    return rng.randbytes(rng.choice([0, 1, rng.randrange(0, 300)]))


def _bound(rng: random.Random, size: int) -> int:
    return rng.choice(
        [0, 0, 1, 16, rng.randrange(1, 64), rng.randrange(1, max(2, size + 8)), 1 << 20]
    )


def _cap(caps: random.Random) -> int:
    return caps.choice([0, 0, 0, 1, 2, 3, caps.randrange(1, 40)])


def _failed(outcome: list[Outcome]) -> bool:
    return bool(outcome) and isinstance(outcome[-1][0], str)


@pytest.mark.compiled_only
@pytest.mark.parametrize("kind", KINDS)
def test_twins_agree(kind: str) -> None:
    native = importlib.import_module("agent.split._splitters_c")
    pure = importlib.import_module("agent.split._splitters_py")
    rng, caps = random.Random(f"twins-{kind}"), random.Random(f"twins-caps-{kind}")
    failures: Counter[tuple[str, bool]] = Counter()  # (error type, streamed) -> cases
    for case in range(4000):
        data = generate(rng, kind)
        strategy = rng.choice(STRATEGIES)
        bound = _bound(rng, len(data))
        chunks = cut(data, random_cuts(rng, len(data)))
        cap = _cap(caps)
        expected = split(pure, kind, strategy, bound, chunks, cap)
        got = split(native, kind, strategy, bound, chunks, cap)
        where = (case, kind, strategy, bound, cap, data.hex(), [len(c) for c in chunks])
        assert got == expected, where
        if _failed(expected):
            failures[expected[-1][0], bound == 0] += 1
    assert 150 < failures.total() < 3000, failures  # both paths well exercised
    if kind in ("Line", "None"):
        # No framing to be corrupt: only a record over a bound fails, never a streamed body.
        assert set(failures) == {("RecordTooLargeError", False)}, failures
    else:
        # Damaged frames fail bounded and streamed alike; a bound fails whole records.
        assert set(failures) == {
            ("CorruptInputError", False),
            ("CorruptInputError", True),
            ("RecordTooLargeError", False),
        }, failures


@pytest.mark.parametrize("kind", KINDS)
def test_cutting_changes_nothing(splitters_twin: ModuleType, kind: str) -> None:
    rng, caps = random.Random(f"cuts-{kind}"), random.Random(f"cuts-caps-{kind}")
    rounds = 600 if splitters_twin.implementation() != "python" else 250
    for case in range(rounds):
        data = generate(rng, kind)
        strategy = rng.choice(STRATEGIES)
        bound = rng.choice([1, 8, 40, rng.randrange(1, max(2, len(data) + 8)), 1 << 20])
        cap = _cap(caps)
        whole = split(splitters_twin, kind, strategy, bound, [data], cap)
        chunks = cut(data, random_cuts(rng, len(data)))
        pieces = split(splitters_twin, kind, strategy, bound, chunks, cap)
        where = (case, kind, strategy, bound, cap, data.hex())
        if _failed(whole):
            assert pieces[-1] == whole[-1], where
            assert pieces[: len(whole) - 1] == whole[:-1], where
            continue
        assert pieces == whole, where
        assert all(first and last for *_, first, last in whole)
        assert all(len(body) <= bound for body, *_ in whole), where
        assert all(records <= (cap or records) for _, _, _, records, *_ in whole), where
        if strategy == "MultiRecord" or kind == "None":
            assert b"".join(body for body, *_ in whole) == data, where
            points = [0] + [end for _, _, end, *_ in whole]
            assert [start for _, start, *_ in whole] == points[:-1], where
        if kind == "Line":
            lines = data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))
            assert sum(records for _, _, _, records, *_ in whole) == lines, where


def _large(rng: random.Random, kind: str) -> bytes:
    size = rng.randrange(100_000, 1_500_000 if kind != "TFRecord" else 200_000)
    pool = rng.randbytes(1 << 16)
    if kind == "Line":
        lines, total = [], 0
        while total < size:
            n = rng.choice([rng.randrange(0, 200), rng.randrange(0, 40_000)])
            lines.append(pool[:n].replace(b"\n", b".") + b"\n")
            total += n + 1
        return b"".join(lines)
    if kind == "None":
        return rng.randbytes(size)
    frames, total = [], 0
    while total < size:
        n = rng.choice([rng.randrange(0, 100), rng.randrange(0, 60_000)])
        payload = (pool * 2)[:n]
        frames.append(tf_frame(payload) if kind == "TFRecord" else rio_record(payload))
        total += len(frames[-1])
    return b"".join(frames)


@pytest.mark.compiled_only
@pytest.mark.parametrize("kind", KINDS)
def test_twins_agree_on_large_chunks_held_by_reference(kind: str) -> None:
    """Chunks of 16 KiB and more are held by reference, across many pieces."""
    native = importlib.import_module("agent.split._splitters_c")
    pure = importlib.import_module("agent.split._splitters_py")
    rng, caps = random.Random(f"large-{kind}"), random.Random(f"large-caps-{kind}")
    for case in range(12):
        data = _large(rng, kind)
        strategy = rng.choice(STRATEGIES)
        bound = rng.choice([0, 1 << 16, 200_000, 1 << 20, rng.randrange(50_000, 400_000)])
        sizes = rng.choice([[1 << 14], [1 << 15, 1 << 18], [100, 70_000, 20_000]])
        points, at = [], 0
        while at < len(data):
            at += rng.choice(sizes)
            points.append(at)
        chunks = cut(data, [p for p in points if p < len(data)])
        if rng.random() < 0.3:  # buffers of other types are copied when held
            chunks = [bytearray(c) if i % 2 else memoryview(c) for i, c in enumerate(chunks)]
        cap = caps.choice([0, 0, 5, 40])  # 40: counted a block at a time in the compiled core
        expected = split(pure, kind, strategy, bound, chunks, cap)
        got = split(native, kind, strategy, bound, chunks, cap)
        assert got == expected, (case, kind, strategy, bound, cap, len(data))
