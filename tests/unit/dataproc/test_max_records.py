"""``Agent.MaxRecordsPerRequest`` with DataProcessing: ``RecordBatcher`` packs at most that
many records a batch, whichever bound comes first (docs/design.md §2.4, §2.5)."""

from __future__ import annotations

import random

import pytest

from agent.dataproc import Batch, RecordBatcher, RecordProcessor, parse_path
from agent.job import Plan


def csv_processor(input_filter: str) -> RecordProcessor:
    return RecordProcessor(Plan(True, True, True, parse_path(input_filter), parse_path("$"), True))


def run(batcher: RecordBatcher, data: bytes, cuts: list[int]) -> list[Batch]:
    out: list[Batch] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        out += batcher.feed(data[previous:cut])
        previous = cut
    return out + batcher.finish()


def shape(batches: list[Batch]) -> list[tuple[bytes, bytes, int, int, int]]:
    return [(b.data, b.inputs, b.start, b.end, b.records) for b in batches]


def lines(data: bytes) -> int:
    return data.count(b"\n") + (not data.endswith(b"\n"))


def rows(rng: random.Random, count: int) -> bytes:
    data = b"".join(b"id%d,%s\n" % (i, b"x" * rng.randrange(0, 30)) for i in range(count))
    return data[:-1] if rng.random() < 0.5 else data  # maybe no final newline


@pytest.mark.parametrize("input_filter", ["$[1]", "$"])  # filtered, and the plain splitter
@pytest.mark.parametrize("seed", range(8))
def test_batches_hold_at_most_the_cap(input_filter: str, seed: int) -> None:
    rng = random.Random(seed)
    data = rows(rng, rng.randrange(1, 80))
    cap = rng.choice([1, 2, 3, 7, 25])
    processor = csv_processor(input_filter)
    count = data.count(b"\n") + (not data.endswith(b"\n"))
    wanted = [cap] * (count // cap) + ([count % cap] if count % cap else [])
    reference = None
    for cuts in ([], list(range(1, len(data))), sorted(rng.sample(range(len(data)), 5))):
        batches = run(RecordBatcher(processor, "MultiRecord", 1 << 20, max_records=cap), data, cuts)
        assert [b.records for b in batches] == wanted  # the cap binds: the bound is far
        assert b"".join(b.inputs for b in batches) == data  # nothing lost or reordered
        assert all(lines(b.data) == b.records for b in batches)
        assert reference is None or shape(batches) == reference  # cutting changes nothing
        reference = shape(batches)


@pytest.mark.parametrize("input_filter", ["$[1]", "$"])
@pytest.mark.parametrize("seed", range(8))
def test_where_the_bound_binds_first_the_batches_are_those_without_a_cap(
    input_filter: str, seed: int
) -> None:
    rng = random.Random(seed)
    data = rows(rng, rng.randrange(1, 80))
    processor = csv_processor(input_filter)
    bound = rng.randrange(40, 200)
    plain = shape(run(RecordBatcher(processor, "MultiRecord", bound), data, []))
    most = max(records for *_, records in plain)
    capped = RecordBatcher(processor, "MultiRecord", bound, max_records=most)
    assert shape(run(capped, data, [7])) == plain
    if most > 1:
        fewer = RecordBatcher(processor, "MultiRecord", bound, max_records=most - 1)
        assert max(b.records for b in run(fewer, data, [])) == most - 1


def test_single_record_is_unchanged_by_a_cap() -> None:
    processor = csv_processor("$[1]")
    data = b"a,1\nb,2\nc,3\n"
    single = shape(run(RecordBatcher(processor, "SingleRecord", 100), data, []))
    assert shape(run(RecordBatcher(processor, "SingleRecord", 100, max_records=2), data, [])) == (
        single
    )


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="bad batching"):
        RecordBatcher(csv_processor("$[1]"), "MultiRecord", 100, max_records=-1)
