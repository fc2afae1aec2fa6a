"""Record streams, valid and damaged, cut at random chunk boundaries (docs/design.md §2.1-2.4).

Random Line, RecordIO and TFRecord streams (and SplitType None objects) are built, then
maybe damaged: cut short, a byte flipped in a header, a CRC, the magic or a trailer, a
frame's length rewritten (for TFRecord with or without a matching length CRC), junk put
in. Each is fed in random chunks to both twins (``splitters_twin``) with a random
BatchStrategy, bound and cap on records. A plain reference reader per format, written
here from the format facts of docs/design.md §2.1-2.3 alone, says which records the
stream holds and which error ends it; the splitter must agree with it:

* a valid stream gives exactly the reference's bodies: SingleRecord one record each
  (RecordIO parts joined by the magic, TFRecord payloads), MultiRecord runs of whole
  records packed greedily under the bound and the cap, their concatenation the input and
  their ``bounds`` the record ends; streamed bodies (bound 0) joined from their parts;
* a damaged one raises the reference's error type at the reference's byte offset (with
  the record's size and the bound for a record too large), after bodies that are a prefix
  of the reference's bodies of the records before the error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.split import MAGIC_BYTES, masked, rio_frame, tf_frame
from tests.unit.property.profiles import examples

MAGIC = 0xCED7230A

# ----------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Rec:
    start: int
    end: int
    raw: bytes  # as in the stream (framing and padding included)
    single: bytes  # what a SingleRecord body carries for it


@dataclass(frozen=True)
class Read:
    records: list[Rec]  # the records before the error, if any
    error: tuple[str, int, int | None] | None  # (type, offset, size of a record too large)


def _too_large(rec_start: int, size: int, bound: int) -> tuple[str, int, int | None] | None:
    return ("RecordTooLargeError", rec_start, size) if bound and size > bound else None


def read_line(data: bytes, single: bool, bound: int) -> Read:
    """§2.1: a record is the bytes up to and including ``\\n``; a final segment without
    one is a record when not empty. A record over the bound is an error at its start."""
    records: list[Rec] = []
    at = 0
    while at < len(data):
        stop = data.find(b"\n", at)
        end = len(data) if stop < 0 else stop + 1
        line = data[at:end]
        if (error := _too_large(at, len(line), bound)) is not None:
            return Read(records, error)
        records.append(Rec(at, end, line, line))
        at = end
    return Read(records, None)


def read_none(data: bytes, single: bool, bound: int) -> Read:
    """§2.1: the whole object is one record (none when empty)."""
    if (error := _too_large(0, len(data), bound)) is not None:
        return Read([], error)
    return Read([Rec(0, len(data), data, data)] if data else [], None)


def read_recordio(data: bytes, single: bool, bound: int) -> Read:
    """§2.2: magic, lrec (cflag in its top 3 bits), payload, zero padding to 4 bytes."""
    records: list[Rec] = []
    at, n = 0, len(data)
    opened: int | None = None  # where an open multi-part record starts
    parts: list[int] = []  # payload lengths (from the headers) of the record so far
    payloads: list[bytes] = []
    while at < n:
        if n - at < 8:
            return Read(records, ("CorruptInputError", at, None))
        magic, lrec = struct.unpack_from("<II", data, at)
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        if magic != MAGIC or cflag > 3:
            return Read(records, ("CorruptInputError", at, None))
        if cflag in (0, 1):  # a record starts: none may be open
            if opened is not None:
                return Read(records, ("CorruptInputError", at, None))
            start, parts, payloads = at, [], []
            opened = at if cflag == 1 else None
        else:  # a middle or last part: a record must be open
            if opened is None:
                return Read(records, ("CorruptInputError", at, None))
            start = opened
            opened = None if cflag == 3 else opened
        end = at + 8 + length + (-length % 4)
        parts.append(length)
        if cflag in (0, 3):  # the record is complete: its size is known from the headers
            size = sum(parts) + 4 * (len(parts) - 1) if single else end - start
            if (error := _too_large(start, size, bound)) is not None:
                return Read(records, error)
        if end > n:
            return Read(records, ("CorruptInputError", at, None))
        payloads.append(data[at + 8 : at + 8 + length])
        if cflag in (0, 3):
            records.append(Rec(start, end, data[start:end], MAGIC_BYTES.join(payloads)))
        at = end
    if opened is not None:
        return Read(records, ("CorruptInputError", opened, None))
    return Read(records, None)


def _masked_crc(data: bytes) -> int:
    return masked(data)  # tests/support/split.py: the crc32c package, not the agent's


def read_tfrecord(data: bytes, single: bool, bound: int) -> Read:
    """§2.3: uint64 length, masked CRC-32C of those 8 bytes, payload, its masked CRC-32C."""
    records: list[Rec] = []
    at, n = 0, len(data)
    while at < n:
        if n - at < 12:
            return Read(records, ("CorruptInputError", at, None))
        (length,) = struct.unpack_from("<Q", data, at)
        if struct.unpack_from("<I", data, at + 8)[0] != _masked_crc(data[at : at + 8]):
            return Read(records, ("CorruptInputError", at, None))
        end = at + 16 + length
        if (error := _too_large(at, length if single else end - at, bound)) is not None:
            return Read(records, error)
        if end > n:
            return Read(records, ("CorruptInputError", at, None))
        payload = data[at + 12 : end - 4]
        if struct.unpack_from("<I", data, end - 4)[0] != _masked_crc(payload):
            return Read(records, ("CorruptInputError", at, None))
        records.append(Rec(at, end, data[at:end], payload))
        at = end
    return Read(records, None)


READERS = {
    "Line": read_line,
    "None": read_none,
    "RecordIO": read_recordio,
    "TFRecord": read_tfrecord,
}


def reference_bodies(
    kind: str, records: list[Rec], single: bool, bound: int, cap: int
) -> list[tuple[bytes, int, int, int]]:
    """§2.4: (data, start, end, records) of each body the records make."""
    if single or kind == "None":
        return [(r.single, r.start, r.end, 1) for r in records]
    bodies: list[tuple[bytes, int, int, int]] = []
    run: list[Rec] = []
    for record in records:
        size = sum(len(r.raw) for r in run)
        if run and ((bound and size + len(record.raw) > bound) or len(run) == cap):
            bodies.append((b"".join(r.raw for r in run), run[0].start, run[-1].end, len(run)))
            run = []
        run.append(record)
    if run:
        bodies.append((b"".join(r.raw for r in run), run[0].start, run[-1].end, len(run)))
    return bodies


# ----------------------------------------------------------------------------- the splitter


@dataclass
class Outcome:
    bodies: list[tuple[bytes, int, int, int]]  # whole bodies (streamed parts joined)
    ends: list[list[int] | None]  # each whole body's record ends (Body.bounds), if any
    error: tuple[str, int, int | None] | None
    parts_ok: bool  # every streamed part kept the body's start


def run_splitter(
    twin: ModuleType, kind: str, strategy: str, bound: int, cap: int, chunks: list[bytes]
) -> Outcome:
    splitter = twin.make_splitter(kind, strategy, bound, cap, True)
    out = Outcome([], [], None, True)
    pending: list[bytes] = []
    opened_at: int | None = None

    def take(items: list[Any]) -> None:
        nonlocal opened_at
        for body in items:
            if body.first:
                assert not pending and opened_at is None, "a body opened inside another"
                opened_at = body.start
            out.parts_ok &= body.start == opened_at
            pending.append(bytes(body.data))
            if body.last:
                out.bodies.append((b"".join(pending), opened_at or 0, body.end, body.records))
                raw = body.bounds
                out.ends.append(
                    None if raw is None else list(struct.unpack(f"<{len(raw) // 4}I", raw))
                )
                pending.clear()
                opened_at = None

    try:
        for chunk in chunks:
            take(splitter.feed(chunk))
        take(splitter.finish())
    except ValueError as error:  # SplitError is a ValueError; anything else fails the test
        size = getattr(error, "size", None)
        out.error = (type(error).__name__, getattr(error, "offset", -1), size)
    return out


# ----------------------------------------------------------------------------- streams

payloads = st.binary(max_size=40) | st.binary(max_size=4)
line_bytes = st.lists(st.sampled_from(b"ab,\r\x00\xff"), max_size=30).map(bytes)


@st.composite
def streams(draw: st.DrawFn, kind: str) -> tuple[bytes, list[int]]:
    """A valid stream of ``kind`` and the offsets of its frames (headers to damage)."""
    frames: list[bytes] = []
    if kind == "Line":
        lines = draw(
            st.lists(st.tuples(line_bytes, st.sampled_from([b"\n", b"\r\n"])), max_size=12)
        )
        data = b"".join(text + end for text, end in lines)
        if draw(st.booleans()):
            data += draw(line_bytes)  # a last line without its newline
        return data, []
    if kind == "None":
        return draw(st.binary(max_size=200)), []
    for parts in draw(st.lists(st.lists(payloads, min_size=1, max_size=4), max_size=8)):
        if kind == "TFRecord":
            frames += [tf_frame(part) for part in parts]
        elif len(parts) == 1:
            frames.append(rio_frame(parts[0], 0))
        else:
            flags = [1] + [2] * (len(parts) - 2) + [3]
            frames += [rio_frame(part, flag) for part, flag in zip(parts, flags, strict=True)]
    offsets, at = [], 0
    for frame in frames:
        offsets.append(at)
        at += len(frame)
    return b"".join(frames), offsets


@st.composite
def damaged(draw: st.DrawFn, kind: str) -> bytes:
    """A stream of ``kind``, damaged one way or another (or not at all)."""
    data, offsets = draw(streams(kind))
    how = draw(st.sampled_from(["none", "none", "cut", "flip", "header", "length", "junk"]))
    if how == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "junk":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=12)) + data[at:]
    if not offsets:
        return data
    frame = draw(st.sampled_from(offsets))
    if how == "header":  # the magic, lrec, a length, a length CRC, or a payload CRC
        size = 8 if kind == "RecordIO" else 12
        at = frame + draw(st.integers(0, size - 1))
        if kind == "TFRecord" and draw(st.booleans()):  # the payload CRC, at the frame's end
            (length,) = struct.unpack_from("<Q", data, frame)
            at = frame + 12 + length + draw(st.integers(0, 3))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "length":
        if kind == "RecordIO":
            (lrec,) = struct.unpack_from("<I", data, frame + 4)
            length = draw(st.integers(0, 80) | st.integers(0, (1 << 29) - 1))
            new = struct.pack("<I", (lrec & ~((1 << 29) - 1)) | length)
            return data[: frame + 4] + new + data[frame + 8 :]
        length_bytes = struct.pack("<Q", draw(st.integers(0, 80) | st.integers(0, 2**64 - 1)))
        crc = (
            struct.pack("<I", masked(length_bytes))
            if draw(st.booleans())
            else data[frame + 8 : frame + 12]
        )
        return data[:frame] + length_bytes + crc + data[frame + 12 :]
    return data


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, str, int, int, list[bytes]]:
    kind = draw(st.sampled_from(["Line", "RecordIO", "TFRecord", "None"]))
    data = draw(damaged(kind))
    strategy = draw(st.sampled_from(["MultiRecord", "SingleRecord"]))
    bound = draw(
        st.sampled_from([0, 1 << 20]) | st.integers(1, 64) | st.integers(1, max(1, len(data) + 16))
    )
    cap = draw(st.sampled_from([0, 0, 1, 2, 3]) | st.integers(1, 10))
    if draw(st.integers(0, 4)) == 0 and len(data) <= 300:
        cuts = list(range(1, len(data)))  # one byte at a time
    else:
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    points = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    return kind, data, strategy, bound, cap, chunks


# ----------------------------------------------------------------------------- properties


@settings(max_examples=examples(3.0))
@given(case=cases())
def test_splitters_agree_with_the_reference_reader(
    splitters_twin: ModuleType, case: tuple[str, bytes, str, int, int, list[bytes]]
) -> None:
    kind, data, strategy, bound, cap, chunks = case
    single = strategy == "SingleRecord"
    read = READERS[kind](data, single, bound)
    got = run_splitter(splitters_twin, kind, strategy, bound, cap, chunks)
    expected = reference_bodies(kind, read.records, single, bound, cap)
    assert got.error == read.error
    assert got.parts_ok
    if read.error is not None:
        # Bodies the splitter completed before the error: the first of the reference's.
        assert got.bodies == expected[: len(got.bodies)]
        return
    assert got.bodies == expected
    for (body, start, _, records), ends in zip(got.bodies, got.ends, strict=True):
        if bound and not single and kind != "None":
            assert len(body) <= bound and records <= (cap or records)
            assert ends is not None and len(ends) == records
            cuts = [0, *ends]
            pieces = [body[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
            assert pieces == [r.raw for r in read.records if start <= r.start < start + len(body)]
        else:
            assert ends is None
    if not single or kind == "None":
        assert b"".join(body for body, *_ in got.bodies) == data
