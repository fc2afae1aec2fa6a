"""Record boundaries on DataProcessing batches (``RecordBatcher(..., bounds=True)``;
docs/design.md §2.4, §2.5).

A MultiRecord Line batch says where each record ends in the body it sends (``bounds``)
and in its unfiltered inputs (``input_bounds``): slicing ``data`` by ``bounds`` gives the
filtered records one by one, slicing ``inputs`` by ``input_bounds`` the input lines
exactly as in the file, however the input is cut, under a bound and a cap. With
InputFilter ``$`` the splitter's ``Body.bounds`` serve as both. Without the flag, and
for SingleRecord or SplitType None, both are ``None``.
"""

from __future__ import annotations

import random
import struct

import pytest

from agent.dataproc import Batch, RecordBatcher, RecordProcessor, parse_path
from agent.job import Plan


def processor(input_filter: str, *, lines: bool = True) -> RecordProcessor:
    """CSV lines (SplitType Line), or one JSON document (SplitType None)."""
    csv = lines
    return RecordProcessor(Plan(lines, csv, csv, parse_path(input_filter), parse_path("$"), True))


def run(batcher: RecordBatcher, data: bytes, cuts: list[int]) -> list[Batch]:
    out: list[Batch] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        out += batcher.feed(data[previous:cut])
        previous = cut
    return out + batcher.finish()


def rows(rng: random.Random, count: int) -> list[bytes]:
    """CSV lines as in the file; the last one maybe without its newline."""
    out = [
        b"id%d,%s,%s\n" % (i, b"x" * rng.randrange(0, 30), rng.choice([b"1.5", b"", b'"a,b"']))
        for i in range(count)
    ]
    if out and rng.random() < 0.5:
        out[-1] = out[-1][:-1]
    return out


def pieces(data: bytes, bounds: bytes | None) -> list[bytes]:
    assert bounds is not None
    ends = struct.unpack(f"<{len(bounds) // 4}I", bounds)
    assert list(ends) == sorted(set(ends)) and ends[-1] == len(data)
    return [data[a:b] for a, b in zip((0, *ends), ends, strict=False)]


def cuts(rng: random.Random, size: int) -> list[int]:
    if size < 2:
        return []
    return rng.choice(
        [[], list(range(1, size)), sorted(rng.sample(range(1, size), min(size - 1, 6)))]
    )


@pytest.mark.parametrize("input_filter", ["$[1:]", "$[0]", "$"])  # filtered, and the splitter
@pytest.mark.parametrize("seed", range(12))
def test_slices_are_the_records_one_by_one(input_filter: str, seed: int) -> None:
    rng = random.Random(f"{input_filter}-{seed}")
    lines = rows(rng, rng.randrange(1, 120))
    data = b"".join(lines)
    proc = processor(input_filter)
    wanted = [proc.filter_input(line) for line in lines]  # each record as it is sent
    bound = rng.choice([1 << 20, max(map(len, wanted)) + rng.randrange(0, 200)])
    cap = rng.choice([0, 0, 1, 3, 17])
    batcher = RecordBatcher(proc, "MultiRecord", bound, max_records=cap, bounds=True)
    batches = run(batcher, data, cuts(rng, len(data)))
    where = (input_filter, seed, bound, cap)
    sent = [p for batch in batches for p in pieces(batch.data, batch.bounds)]
    read = [p for batch in batches for p in pieces(batch.inputs, batch.input_bounds)]
    assert sent == wanted, where
    assert read == lines, where
    assert all(len(b.bounds or b"") == 4 * b.records for b in batches), where
    assert all(len(b.input_bounds or b"") == 4 * b.records for b in batches), where
    if input_filter == "$":
        assert all(b.input_bounds is b.bounds for b in batches), where
    # the bodies are those without the flag
    plain = run(RecordBatcher(proc, "MultiRecord", bound, max_records=cap), data, [])
    assert [(b.data, b.inputs, b.start, b.end, b.records) for b in plain] == [
        (b.data, b.inputs, b.start, b.end, b.records) for b in batches
    ], where


@pytest.mark.parametrize("input_filter", ["$[1:]", "$"])
def test_many_records_a_batch(input_filter: str) -> None:
    """Thousands of records a batch, from chunks cut mid-record."""
    rng = random.Random(input_filter)
    lines = rows(rng, 20_000)
    data = b"".join(lines)
    proc = processor(input_filter)
    batcher = RecordBatcher(proc, "MultiRecord", 1 << 18, bounds=True)
    points = list(range(7919, len(data), 7919))
    batches = run(batcher, data, points)
    assert max(b.records for b in batches) > 5000
    assert [p for b in batches for p in pieces(b.inputs, b.input_bounds)] == lines
    assert [p for b in batches for p in pieces(b.data, b.bounds)] == [
        proc.filter_input(line) for line in lines
    ]


@pytest.mark.parametrize("input_filter", ["$[1:]", "$"])
@pytest.mark.parametrize(
    ("strategy", "lines", "flag"),
    [
        ("MultiRecord", True, False),  # flag off
        ("SingleRecord", True, True),
        ("MultiRecord", False, True),  # SplitType None: one record, the whole object
        ("SingleRecord", False, True),
    ],
)
def test_none_without_the_flag_or_where_a_batch_is_one_record(
    input_filter: str, strategy: str, lines: bool, flag: bool
) -> None:
    proc = processor(input_filter, lines=lines)
    data = b"a,1\nb,2\nc,3\n" if lines else b'["a", 1, 2]'
    batches = run(RecordBatcher(proc, strategy, 1 << 20, bounds=flag), data, [5])
    assert batches
    assert all(b.bounds is None and b.input_bounds is None for b in batches)
