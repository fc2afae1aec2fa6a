"""DataProcessing bodies: records filtered, then packed under the bound (docs/design.md §2.4)."""

from __future__ import annotations

import csv
import io
import random

import pytest

from agent.dataproc import Batch, RecordBatcher, RecordProcessor, parse_path
from agent.job import Plan
from agent.split import RecordTooLargeError


def csv_processor(input_filter: str = "$[1:]", *, join: bool = True) -> RecordProcessor:
    return RecordProcessor(
        Plan(True, True, True, parse_path(input_filter), parse_path("$[0,-1]"), join)
    )


def json_processor(input_filter: str, *, lines: bool) -> RecordProcessor:
    return RecordProcessor(
        Plan(lines, False, False, parse_path(input_filter), parse_path("$"), True)
    )


def run(batcher: RecordBatcher, data: bytes, cuts: list[int]) -> list[Batch]:
    out: list[Batch] = []
    previous = 0
    for cut in [*cuts, len(data)]:
        out += batcher.feed(data[previous:cut])
        previous = cut
    return out + batcher.finish()


def csv_data(rng: random.Random, rows: int) -> bytes:
    lines = []
    for i in range(rows):
        fields = [f"id{i}"] + [rng.choice(["1.5", "", '"a,b"', "xyz", "7"]) for _ in range(3)]
        end = rng.choice(["\n", "\n", "\r\n"])
        lines.append(",".join(fields[: rng.randrange(1, 5)]) + end)
    if rng.random() < 0.3:
        lines.append("\n")  # an empty line is a record
    data = "".join(lines).encode()
    return data[:-1] if rng.random() < 0.5 else data  # maybe no final newline


def records_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) if b"\r" not in data else _lf_lines(data)


def _lf_lines(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return lines + ([parts[-1]] if parts[-1] else [])


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
@pytest.mark.parametrize("seed", range(12))
def test_batches_cover_the_input_however_it_is_cut(strategy: str, seed: int) -> None:
    rng = random.Random(seed)
    data = csv_data(rng, rng.randrange(1, 60))
    bound = rng.choice([16, 40, 100, 1 << 20])
    processor = csv_processor()
    records = records_of(data)
    expected_body = [processor.filter_input(record) for record in records]
    reference = None
    for cuts in ([], list(range(1, len(data))), sorted(rng.sample(range(len(data)), 5))):
        batches = run(RecordBatcher(processor, strategy, bound), data, cuts)
        shape = [(b.data, b.inputs, b.start, b.end, b.records) for b in batches]
        assert reference is None or shape == reference  # cutting changes nothing
        reference = shape
    batches = run(RecordBatcher(processor, strategy, bound), data, [])
    assert b"".join(b.inputs for b in batches) == data
    assert b"".join(b.data for b in batches) == b"".join(expected_body)
    assert sum(b.records for b in batches) == len(records)
    position = 0
    for batch in batches:
        assert (batch.start, batch.end) == (position, position + len(batch.inputs))
        assert batch.first and batch.last
        assert len(batch.data) <= bound
        assert batch.data.count(b"\n") == batch.records
        position = batch.end
    if strategy == "SingleRecord":
        assert all(b.records == 1 for b in batches)
    else:  # greedy: the next batch's first record would not have fit
        sizes = [len(body) for body in expected_body]
        index = 0
        for batch in batches[:-1]:
            index += batch.records
            assert len(batch.data) + sizes[index] > bound


def test_assemble_round_trip_over_batches() -> None:
    processor = csv_processor("$[1:]")
    data = b"id0,1,2\nid1,3,4\r\nid2,5,6\nid3,7,8"
    out = b""
    for batch in run(RecordBatcher(processor, "MultiRecord", 10), data, [3, 11]):
        answers = b"".join(b"p%d\n" % i for i in range(batch.records))
        out += processor.assemble(batch.inputs, answers, what="x", start=batch.start)
    assert out == b"id0,p0\nid1,p1\nid2,p0\nid3,p1\n"  # two records of 4 bytes a batch


def test_dollar_input_filter_uses_the_plain_splitter() -> None:
    processor = csv_processor("$")
    batches = run(RecordBatcher(processor, "MultiRecord", 10), b"a,1\nb,2\nc,3\n", [5])
    assert [b.data for b in batches] == [b"a,1\nb,2\n", b"c,3\n"]
    assert all(b.data is b.inputs for b in batches)


def test_the_bound_applies_to_filtered_records() -> None:
    processor = csv_processor("$[0]")
    wide = b"k," + b"x" * 50 + b"\n"  # 53 bytes as read, 2 as sent
    batcher = RecordBatcher(processor, "MultiRecord", 8, max_input_bytes=1000)
    assert [b.data for b in run(batcher, wide * 3, [])] == [b"k\nk\nk\n"]
    with pytest.raises(RecordTooLargeError) as caught:
        batcher = RecordBatcher(csv_processor("$[1]"), "MultiRecord", 8, max_input_bytes=1000)
        run(batcher, b"a,b\n" + wide, [])
    assert caught.value.offset == 4 and caught.value.size == 51
    assert "is 51 bytes after InputFilter, over the 8-byte bound" in str(caught.value)


def test_unfiltered_records_are_bounded_too() -> None:
    processor = csv_processor("$[0]")
    batcher = RecordBatcher(processor, "MultiRecord", 8, max_input_bytes=40)
    assert batcher.feed(b"k,1\n" + b"x" * 30) == []  # the second record is held
    with pytest.raises(RecordTooLargeError, match="record at byte 4 is longer than 40 bytes"):
        batcher.feed(b"x" * 20)
    with pytest.raises(RecordTooLargeError, match="record at byte 0 is 45 bytes before"):
        RecordBatcher(processor, "MultiRecord", 8, max_input_bytes=40).feed(b"y," * 22 + b"\n")
    # The unfiltered bytes a batch holds stay under the cap as well.
    batches = run(
        RecordBatcher(processor, "MultiRecord", 100, max_input_bytes=40), b"k,1234567\n" * 9, []
    )
    assert [b.records for b in batches] == [4, 4, 1]


def test_default_bounds() -> None:
    batcher = RecordBatcher(csv_processor(), "MultiRecord", 0)
    assert batcher.bound == 100 << 20 and batcher.max_input_bytes == 400 << 20
    assert RecordBatcher(csv_processor(), "MultiRecord", 6 << 20).max_input_bytes == 24 << 20
    with pytest.raises(ValueError):
        RecordBatcher(csv_processor(), "Multi", 10)


def test_json_document_is_one_batch() -> None:
    processor = json_processor("$.instances", lines=False)
    document = b'{"id": 1,\n "instances": [1, 2]}\n'
    (batch,) = run(RecordBatcher(processor, "MultiRecord", 100), document, [4, 20])
    assert (batch.data, batch.inputs, batch.start, batch.end, batch.records) == (
        b"[1,2]",
        document,
        0,
        len(document),
        1,
    )
    assert run(RecordBatcher(processor, "MultiRecord", 100), b"", []) == []


def test_json_lines_batches() -> None:
    processor = json_processor("$.x", lines=True)
    data = b'{"x": [1, 2]}\n{"x": 3}\n'
    batches = run(RecordBatcher(processor, "SingleRecord", 100), data, [1])
    assert [b.data for b in batches] == [b"[1,2]\n", b"3\n"]
    assert [b.inputs for b in batches] == [b'{"x": [1, 2]}\n', b'{"x": 3}\n']


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_a_whole_file_matches_python_csv(strategy: str) -> None:
    """InputFilter, a model, JoinSource and OutputFilter over a file cut into chunks, against
    the same steps done independently with Python's csv module."""
    rng = random.Random(strategy)
    rows = [
        [f"id-{i}", *(rng.choice(["1.5", "", "a,b", 'say "hi"', "x"]) for _ in range(5))]
        for i in range(400)
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n" if rng.random() < 0.5 else "\n").writerows(rows)
    data = buffer.getvalue().encode()

    def model(body: bytes) -> bytes:  # a score per row: how many fields it was sent
        sent = csv.reader(io.StringIO(body.decode()))
        return b"".join(b"%d\n" % len(row) for row in sent)

    processor = csv_processor("$[1:4]", join=True)  # $[0,-1] afterwards
    cuts = sorted(rng.sample(range(len(data)), 40))
    out = b""
    for batch in run(RecordBatcher(processor, strategy, 300), data, cuts):
        answer = model(batch.data)
        out += processor.assemble(batch.inputs, answer, what="t", start=batch.start)
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    for row in rows:
        writer.writerow([row[0], str(len(row[1:5]))])  # columns 1 to 4, end included
    assert out.decode() == expected.getvalue()
