"""Batching: random records under random MaxPayload, MaxRecordsPerRequest and BatchStrategy
(docs/design.md §2.4, §2.5).

The records are generated here, so their bytes and offsets are known without reading
them back. For the splitters (both twins), the ``Packer`` (both twins) and DataProcessing's
``RecordBatcher`` (a text/csv InputFilter):

* every body is within the bound, and a MultiRecord body within the cap on records;
* a MultiRecord body is full: the record after it would pass the bound or the cap;
* MultiRecord bodies concatenate to the input (a last Line without its newline is the
  last record, as it is in the file); SingleRecord bodies are the records, one each;
* a record larger than the bound is never sent: the code raises ``RecordTooLargeError``
  at that record's offset, with its size and the bound, after the bodies of the records
  before it (docs/design.md §2.4: "A record over the bound fails its file").
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dataproc import RecordBatcher, RecordProcessor, parse_path
from agent.job import Plan
from agent.split import RecordTooLargeError
from tests.support.runjob import Record, line, recordio, tfrecord
from tests.unit.property.profiles import examples


@dataclass(frozen=True)
class Case:
    kind: str
    records: list[Record]
    data: bytes
    strategy: str
    bound: int
    cap: int
    chunks: list[bytes]

    @property
    def single(self) -> bool:
        return self.strategy == "SingleRecord"

    def size(self, record: Record) -> int:
        """What the bound applies to: the frame (MultiRecord) or the payload (SingleRecord)."""
        return len(record.single if self.single else record.raw)

    def starts(self) -> list[int]:
        found, at = [], 0
        for record in self.records:
            found.append(at)
            at += len(record.raw)
        return found


sizes = st.integers(0, 40) | st.integers(0, 400)


@st.composite
def records(draw: st.DrawFn, kind: str) -> list[Record]:
    count = draw(st.integers(0, 25))
    found: list[Record] = []
    for _ in range(count):
        text = b"r" * draw(sizes)
        if kind == "Line":
            found.append(line(text + draw(st.sampled_from([b"\n", b"\r\n"]))))
        elif kind == "RecordIO":
            parts = draw(st.integers(1, 3))
            found.append(recordio(*[text[i::parts] for i in range(parts)]))
        else:
            found.append(tfrecord(text))
    if kind == "Line" and draw(st.booleans()):
        found.append(line(b"t" * draw(st.integers(1, 50))))  # no newline: still a record
    return found


def _chunks(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["Line", "RecordIO", "TFRecord"]))
    found = draw(records(kind))
    data = b"".join(record.raw for record in found)
    strategy = draw(st.sampled_from(["MultiRecord", "SingleRecord"]))
    largest = max((len(record.raw) for record in found), default=1)
    # Bounds around the records' sizes (so some records do not fit), and MiB ones.
    bound = draw(st.integers(1, largest + 64) | st.sampled_from([1 << 20, 6 << 20]))
    cap = draw(st.sampled_from([0, 1, 2, 3]) | st.integers(1, 30))
    return Case(kind, found, data, strategy, bound, cap, _chunks(draw, data))


def check_bodies(case: Case, bodies: list[tuple[bytes, int, int, int]], error: Exception | None):
    """The properties of the module docstring, for bodies (data, start, end, records)."""
    starts = case.starts()
    oversize = [i for i, record in enumerate(case.records) if case.size(record) > case.bound]
    fits = case.records[: oversize[0]] if oversize else case.records
    if oversize:  # exactly the first record over the bound fails, where it starts
        first = oversize[0]
        assert isinstance(error, RecordTooLargeError), error
        assert (error.offset, error.size, error.limit) == (
            starts[first],
            case.size(case.records[first]),
            case.bound,
        )
    else:
        assert error is None, error
    for data, *_ in bodies:
        assert len(data) <= case.bound
    if case.single:
        assert [body[0] for body in bodies] == [r.single for r in fits][: len(bodies)]
        assert all(records == 1 for *_, records in bodies)
        if not oversize:
            assert len(bodies) == len(fits)
        return
    joined = b"".join(data for data, *_ in bodies)
    assert joined == b"".join(r.raw for r in fits)[: len(joined)]
    if not oversize:
        assert joined == case.data
    taken = 0
    for data, start, end, count in bodies:
        assert 1 <= count <= (case.cap or count)
        assert (start, end) == (starts[taken], starts[taken] + len(data))
        assert data == b"".join(r.raw for r in fits[taken : taken + count])
        taken += count
        if taken < len(case.records):  # full: the next record would pass a bound
            after = len(data) + len(case.records[taken].raw)
            assert after > case.bound or count == case.cap, (len(data), count)


@settings(max_examples=examples(2.0))
@given(case=cases())
def test_splitter_bodies_keep_the_bounds(splitters_twin: ModuleType, case: Case) -> None:
    splitter = splitters_twin.make_splitter(case.kind, case.strategy, case.bound, case.cap)
    bodies: list[tuple[bytes, int, int, int]] = []
    error = None
    try:
        for chunk in case.chunks:
            bodies += [(bytes(b.data), b.start, b.end, b.records) for b in splitter.feed(chunk)]
        bodies += [(bytes(b.data), b.start, b.end, b.records) for b in splitter.finish()]
    except RecordTooLargeError as caught:
        error = caught
    check_bodies(case, bodies, error)


@settings(max_examples=examples(1.0))
@given(case=cases())
def test_packer_keeps_the_bounds(splitters_twin: ModuleType, case: Case) -> None:
    """The Packer packs records already cut (their SingleRecord form) under the same rules."""
    packer = splitters_twin.Packer(case.strategy, case.bound, case.cap)
    records = [Record(r.single, r.single) for r in case.records]
    cut = Case(
        case.kind,
        records,
        b"".join(r.raw for r in records),
        case.strategy,
        case.bound,
        case.cap,
        [],
    )
    bodies: list[tuple[bytes, int, int, int]] = []
    error = None
    try:
        at = 0
        for record in records:
            body = packer.add(record.raw, at, at + len(record.raw))
            at += len(record.raw)
            if body is not None:
                bodies.append((bytes(body.data), body.start, body.end, body.records))
        if (body := packer.finish()) is not None:
            bodies.append((bytes(body.data), body.start, body.end, body.records))
    except RecordTooLargeError as caught:
        error = caught
    check_bodies(cut, bodies, error)


# ----------------------------------------------------------------------------- DataProcessing

fields = st.text("abc", max_size=8)


@st.composite
def csv_cases(draw: st.DrawFn) -> tuple[list[bytes], str, int, int, list[bytes]]:
    """CSV lines of 2 to 5 fields (the first sometimes long: dropped by the filter)."""
    rows = []
    for _ in range(draw(st.integers(0, 25))):
        first = draw(fields | st.integers(0, 300).map(lambda n: "x" * n))
        rest = draw(st.lists(fields, min_size=1, max_size=4))
        rows.append(",".join([first, *rest]).encode() + b"\n")
    if rows and draw(st.booleans()):
        rows[-1] = rows[-1][:-1]  # the last line without its newline
    data = b"".join(rows)
    strategy = draw(st.sampled_from(["MultiRecord", "SingleRecord"]))
    bound = draw(st.integers(1, 60))
    cap = draw(st.sampled_from([0, 1, 2, 3]) | st.integers(1, 30))
    return rows, strategy, bound, cap, _chunks(draw, data)


def csv_row(picked: list[bytes]) -> bytes:
    """A CSV line of plain fields; one empty field is written quoted (an empty line holds none)."""
    return (b'""' if picked == [b""] else b",".join(picked)) + b"\n"


CSV_PLAN = Plan(
    lines=True,
    input_csv=True,
    output_csv=True,
    input_filter=parse_path("$[1:]"),
    output_filter=parse_path("$"),
    join=False,
)


@settings(max_examples=examples(1.0))
@given(case=csv_cases())
def test_filtered_batches_keep_the_bounds(
    case: tuple[list[bytes], str, int, int, list[bytes]],
) -> None:
    """InputFilter $[1:] over text/csv: the bound applies to the filtered bytes, and a
    record may be up to four times the bound before filtering (docs/design.md §2.5)."""
    rows, strategy, bound, cap, chunks = case
    single = strategy == "SingleRecord"
    batcher = RecordBatcher(RecordProcessor(CSV_PLAN), strategy, bound, max_records=cap)
    filtered = [csv_row(row.rstrip(b"\n").split(b",")[1:]) for row in rows]
    starts = [sum(map(len, rows[:i])) for i in range(len(rows))]
    limit = 4 * bound
    oversize = [i for i, row in enumerate(rows) if len(filtered[i]) > bound or len(row) > limit]
    batches = []
    error = None
    try:
        for chunk in chunks:
            batches += batcher.feed(chunk)
        batches += batcher.finish()
    except RecordTooLargeError as caught:
        error = caught
    if oversize:
        assert isinstance(error, RecordTooLargeError), error
        assert error.offset == starts[oversize[0]]
    else:
        assert error is None, error
    taken = 0
    for batch in batches:
        count = batch.records
        assert len(batch.data) <= bound and 1 <= count <= (1 if single else cap or count)
        assert batch.inputs == b"".join(rows[taken : taken + count])
        assert batch.data == b"".join(filtered[taken : taken + count])
        assert (batch.start, batch.end) == (starts[taken], starts[taken] + len(batch.inputs))
        taken += count
        if taken < len(rows) and not single:  # full: the next record would pass a bound
            over = len(batch.data) + len(filtered[taken]) > bound
            over_raw = len(batch.inputs) + len(rows[taken]) > limit
            assert over or over_raw or count == cap
    if not oversize:
        assert taken == len(rows)
    else:
        assert taken <= oversize[0]
