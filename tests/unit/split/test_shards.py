"""Where a shard starts and ends (``agent/split/shards.py``; docs/design.md §2.8).

Inputs come from the shard builders of ``tests/support/split.py``, which also return
where every record starts: a Line file with CRLF and LF, empty and long lines; a RecordIO
file whose payloads hold aligned magic words with record-starting headers (the SDK's
unescaped writing); a TFRecord file whose payloads hold whole valid frames. Each is fed
in chunks of every kind (whole, 1 byte, a few bytes, random, 4 KiB), seeded so a
failure names its case.

* ``RecordWalk`` from a true boundary ends at the first true boundary at or after its
  stop, hands on exactly the bytes up to there, and the splitter finds exactly the
  records between;
* the chain (shard 0 from 0; each next start found by ``StartFinder`` and, when that is
  not the previous shard's end, redone from that end) gives every record exactly once,
  and on the adversarial RecordIO and TFRecord inputs the finder is fooled, so the redo
  is what makes it right; the Line finder is never fooled;
* the finder's own rules (alignment, cflag, fit in the object, both CRCs,
  ``max_record``) and its memory; the walk's cut inside multi-part records, and its
  pass-through after a header that does not parse.

Under ``BT_AGENT_NO_EXTENSIONS=1`` the CRCs are the pure twin's: the files are smaller.
"""

from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Callable, Iterator

import pytest

from agent.codec import crc32c
from agent.split import RecordWalk, StartFinder, make_splitter
from tests.support.split import (
    MAGIC,
    line_stream,
    recordio_stream,
    rio_frame,
    tf_frame,
    tfrecord_stream,
)

KINDS = ["Line", "RecordIO", "TFRecord"]
BUILDERS: dict[str, Callable[..., tuple[bytes, list[int]]]] = {
    "Line": line_stream,
    "RecordIO": recordio_stream,
    "TFRecord": tfrecord_stream,
}
CHUNKINGS = ["whole", "bytes1", "few", "random", "4k"]
BIG = 1 << 30  # a max_record no test record reaches
CHAIN_SIZE = (1 << 20) if crc32c.IS_NATIVE else (192 << 10)


def chunks(data: bytes, start: int, how: str, rng: random.Random) -> Iterator[bytes]:
    """``data[start:]`` in chunks, made as they are asked for."""
    i, n = start, len(data)
    while i < n:
        if how == "whole":
            step = n - i
        elif how == "bytes1":
            step = 1
        elif how == "few":
            step = rng.randrange(1, 14)
        elif how == "random":
            step = rng.choice((1, 3, 7, rng.randrange(1, 300), rng.randrange(1, 70000)))
        else:
            step = 4096
        yield data[i : i + step]
        i += step


def walk(
    data: bytes, kind: str, first: int, stop: int, how: str, rng: random.Random
) -> tuple[int, list[bytes]]:
    """``L`` and the chunks the walk handed on (each cut as ``feed`` said)."""
    walker = RecordWalk(kind, first, stop)
    taken: list[bytes] = []
    if walker.done:
        assert walker.feed(b"xyz") == 0
    else:
        for chunk in chunks(data, first, how, rng):
            n = walker.feed(chunk)
            taken.append(chunk if n is None else chunk[:n])
            if n is not None:
                assert walker.done and 0 <= n <= len(chunk)
                assert walker.feed(b"more") == 0
                break
    assert not walker.broken
    return walker.finish(), taken


def find(
    data: bytes, kind: str, at: int, how: str, rng: random.Random, max_record: int = BIG
) -> int:
    finder = StartFinder(kind, at, len(data), max_record)
    for chunk in chunks(data, finder.read_from, how, rng):
        found = finder.feed(chunk)
        if found is not None:
            return found
    return finder.finish()


def first_at_or_after(bounds: list[int], offset: int) -> int:
    return bounds[bisect.bisect_left(bounds, offset)]


def splitter_ends(kind: str, pieces: list[bytes], start: int) -> list[int]:
    """Where the splitter finds records ending in the walk's output (absolute)."""
    total = sum(map(len, pieces))
    splitter = make_splitter(kind, "MultiRecord", total + 1, bounds=True)
    bodies = [body for piece in pieces for body in splitter.feed(piece)]
    bodies += splitter.finish()
    ends: list[int] = []
    for body in bodies:
        assert body.bounds is not None
        ends += [start + body.start + e for e in struct.unpack(f"<{body.records}I", body.bounds)]
    return ends


# ----------------------------------------------------------------------------- builders


@pytest.mark.parametrize("kind", KINDS)
def test_the_builders_say_where_the_splitter_finds_records(kind: str) -> None:
    data, bounds = BUILDERS[kind](300_000, seed=5)
    assert bounds[0] == 0 and bounds[-1] == len(data)
    assert bounds == sorted(set(bounds))
    assert [0, *splitter_ends(kind, [data], 0)] == bounds
    assert BUILDERS[kind](300_000, seed=5) == (data, bounds)
    if kind == "Line":
        assert len(data) == 300_000 and b"\r\n" in data and b"\n\n" in data
        assert max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) > 30_000


@pytest.mark.parametrize("kind", ["RecordIO", "TFRecord"])
def test_the_adversarial_builders_hide_frames_in_payloads(kind: str) -> None:
    """Most records hold something the finder takes for a record start."""
    data, bounds = BUILDERS[kind](200_000, seed=1)
    fooled = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        finder = StartFinder(kind, a + 1, len(data), BIG)
        found = finder.feed(data[finder.read_from :])
        fooled += found is not None and found < b
    assert fooled > len(bounds) // 2


@pytest.mark.parametrize("kind", ["RecordIO", "TFRecord"])
def test_without_hidden_frames_the_finder_is_right(kind: str) -> None:
    data, bounds = BUILDERS[kind](CHAIN_SIZE // 2, seed=6, hidden=0.0)
    rng = random.Random(kind)
    assert chain(data, bounds, kind, cuts(rng, bounds, 80, "random"), "random") == (0, 0)


# ----------------------------------------------------------------------------- the walk


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_walk_from_a_boundary_ends_at_the_first_boundary_at_or_after_its_stop(
    kind: str, how: str
) -> None:
    rng = random.Random(f"walk-{kind}-{how}")
    size = 24_000 if how in ("bytes1", "few") else 400_000
    data, bounds = (
        BUILDERS[kind](size, seed=11, long_bytes=4000)
        if kind == "Line"
        else (BUILDERS[kind](size, seed=11))
    )
    for _ in range(40):
        first = rng.choice(bounds)
        reach = 3000 if how == "bytes1" else len(data)
        stop = rng.choice(
            (
                first + rng.randrange(-50, reach),
                rng.choice(bounds),
                rng.choice(bounds) + rng.choice((-1, 1)),
                len(data),
                len(data) + 5,
            )
        )
        stop = max(stop, 0)
        end, taken = walk(data, kind, first, stop, how, rng)
        expected = first if first >= stop else first_at_or_after(bounds, min(stop, len(data)))
        assert end == expected, (first, stop)
        assert b"".join(taken) == data[first:end]
        if how in ("whole", "4k") and first < end:
            inside = bounds[bounds.index(first) + 1 : bounds.index(end) + 1]
            assert splitter_ends(kind, taken, first) == inside


def test_a_line_walk_cuts_after_the_newline_at_or_after_stop_minus_one() -> None:
    data = b"ab\n\r\ncd\n\nlast"
    assert RecordWalk("Line", 0, 3).feed(data) == 3  # the newline at stop - 1
    assert RecordWalk("Line", 0, 4).feed(data) == 5  # CRLF: the record is "\r\n"
    assert RecordWalk("Line", 3, 9).feed(data[3:]) == 6
    walker = RecordWalk("Line", 9, 10)
    assert walker.feed(data[9:]) is None  # the last line has no newline
    assert walker.finish() == len(data)
    walker = RecordWalk("Line", 5, 5)
    assert walker.done and walker.feed(data[5:]) == 0 and walker.finish() == 5


def test_a_recordio_walk_keeps_a_multipart_record_together() -> None:
    parts = rio_frame(b"first", 1) + rio_frame(b"mid", 2) + rio_frame(b"last", 3)
    data = rio_frame(b"x") + parts + rio_frame(b"after")
    start_parts = len(rio_frame(b"x"))
    after = start_parts + len(parts)
    for stop in range(1, after + 1):
        walker = RecordWalk("RecordIO", 0, stop)
        n = walker.feed(data)
        expected = start_parts if stop <= start_parts else after
        assert (n, walker.finish()) == (expected, expected), stop
    # cflag 1 starts a record: a stop just at a multi-part record's start cuts there
    for i in range(1, len(data)):  # and a header cut anywhere
        walker = RecordWalk("RecordIO", 0, start_parts + 1)
        got = walker.feed(data[:i])
        if got is None:
            got = i + (walker.feed(data[i:]) or 0)
        assert walker.finish() == after == got


def test_a_tfrecord_walk_ends_at_the_next_frame_and_reads_no_payload() -> None:
    frames = [tf_frame(b"a" * 5), tf_frame(b""), tf_frame(b"b" * 30)]
    data = b"".join(frames)
    second, third = len(frames[0]), len(frames[0]) + len(frames[1])
    walker = RecordWalk("TFRecord", 0, second + 1)
    assert walker.feed(data) == third and walker.finish() == third
    # a bad payload CRC is the splitter's to find, not the walk's
    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    walker = RecordWalk("TFRecord", 0, len(data))
    assert walker.feed(bytes(damaged)) == len(data) and not walker.broken


@pytest.mark.parametrize("kind", KINDS)
def test_a_walk_is_done_in_the_chunk_that_ends_with_its_last_record(kind: str) -> None:
    """The reader can stop there: no further chunk is needed to see the cut."""
    data, bounds = BUILDERS[kind](50_000, seed=9)
    for i in range(1, len(bounds) - 1, 7):
        walker = RecordWalk(kind, bounds[i - 1], bounds[i])
        assert walker.feed(data[bounds[i - 1] : bounds[i]]) == bounds[i] - bounds[i - 1]
        assert walker.done and walker.finish() == bounds[i]


@pytest.mark.parametrize(
    ("kind", "data", "bad_at"),
    [
        ("RecordIO", rio_frame(b"ok") + b"\x00" * 8 + rio_frame(b"never"), 12),
        ("RecordIO", rio_frame(b"ok") + struct.pack("<II", MAGIC, 5 << 29) + b"zzzz", 12),
        ("TFRecord", tf_frame(b"ok") + b"\x07" + tf_frame(b"x")[1:], 18),
    ],
    ids=["bad-magic", "cflag-5", "bad-length-crc"],
)
def test_a_header_that_does_not_parse_passes_every_further_byte_through(
    kind: str, data: bytes, bad_at: int
) -> None:
    for stop in (1, bad_at, bad_at + 1, len(data)):
        walker = RecordWalk(kind, 0, stop)
        if stop <= bad_at:  # cut at the bad frame's start: its header is not looked at
            assert walker.feed(data) == bad_at
            continue
        assert walker.feed(data[:bad_at]) is None
        assert walker.feed(data[bad_at:]) is None
        assert walker.broken and not walker.done
        assert walker.feed(b"anything") is None
        assert walker.finish() == len(data) + len(b"anything")
        with pytest.raises(ValueError, match=f"at byte {bad_at}"):
            splitter = make_splitter(kind, "MultiRecord", 1 << 20)
            splitter.feed(data)
            splitter.finish()


def test_a_walk_that_meets_the_end_of_the_object_ends_there() -> None:
    data = rio_frame(b"abc") + rio_frame(b"truncated")[:-3]
    walker = RecordWalk("RecordIO", 0, len(data))
    assert walker.feed(memoryview(data)) is None
    assert walker.finish() == len(data)
    walker = RecordWalk("TFRecord", 0, 5)
    assert walker.feed(tf_frame(b"abc")[:7]) is None  # inside the header
    assert walker.finish() == 7


# ----------------------------------------------------------------------------- the chain


def chain(
    data: bytes, bounds: list[int], kind: str, ends: list[int], how: str, max_record: int = BIG
) -> tuple[int, int]:
    """Run the shards ``[ends[k-1], ends[k])`` as the lead's pipeline does; return how many
    starts the finder got wrong (redone) and how many of those lay past the true start."""
    rng = random.Random(f"chain-{kind}-{how}-{len(ends)}")
    truth = set(bounds)
    fooled = late = 0
    start, previous_end = 0, 0
    seen: list[int] = []
    for k, stop in enumerate(ends):
        if k:
            found = find(data, kind, ends[k - 1], how, rng, max_record)
            assert found >= ends[k - 1]
            if found != previous_end:  # the proof failed: redo from the previous end
                fooled += 1
                late += found > previous_end
                assert found not in truth or found > previous_end
                start = previous_end
            else:
                start = found
        end, taken = walk(data, kind, start, stop, how, rng)
        assert end in truth and end >= stop or end == start >= stop
        assert b"".join(taken) == data[start:end]
        seen += [b for b in bounds if start <= b < end]
        previous_end = end
    assert previous_end == len(data)
    assert seen == bounds[:-1]  # every record once, in order
    return fooled, late


def cuts(rng: random.Random, bounds: list[int], n: int, style: str) -> list[int]:
    """Shard ends (the last is the object's size): ``n`` shards of about equal size, or
    ends at true boundaries and just beside them, or many tiny shards."""
    size = bounds[-1]
    if style == "even":
        ends = [size * (k + 1) // n for k in range(n)]
    elif style == "beside":
        picks = rng.sample(bounds[1:-1], min(n, len(bounds) - 2))
        ends = [b + rng.choice((-4, -1, 0, 1, 4)) for b in picks] + [size]
    else:
        ends = [rng.randrange(size) for _ in range(n)] + [size]
        ends += [e + d for e in ends[: n // 4] for d in (1, 2, 3)]
    return sorted({min(max(e, 1), size) for e in ends})


@pytest.mark.parametrize("style", ["even", "beside", "random"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_chain_gives_every_record_once_and_the_redo_is_needed(kind: str, style: str) -> None:
    rng = random.Random(f"{kind}-{style}")
    data, bounds = BUILDERS[kind](CHAIN_SIZE, seed=21)
    fooled = 0
    for n, how in ((3, "whole"), (17, "random"), (60, "4k"), (250, "random")):
        wrong, late = chain(data, bounds, kind, cuts(rng, bounds, n, style), how)
        assert late == 0  # no record is over max_record: only a start too early can be wrong
        fooled += wrong
    if kind == "Line":
        assert fooled == 0  # the Line finder is never fooled
    else:
        assert fooled > 0  # the adversarial payloads fooled the finder: the redo mattered


@pytest.mark.parametrize("kind", KINDS)
def test_the_chain_holds_in_one_byte_chunks(kind: str) -> None:
    rng = random.Random(f"bytes-{kind}")
    data, bounds = (
        BUILDERS[kind](20_000, seed=3, long_bytes=2000)
        if kind == "Line"
        else (BUILDERS[kind](20_000, seed=3))
    )
    fooled, _ = chain(data, bounds, kind, cuts(rng, bounds, 40, "random"), "bytes1")
    assert (fooled == 0) if kind == "Line" else (fooled > 0)


def test_a_tfrecord_record_over_max_record_is_missed_and_the_redo_recovers() -> None:
    data, bounds = tfrecord_stream(CHAIN_SIZE, seed=8)
    rng = random.Random(8)
    late = 0
    for how in ("whole", "random"):
        _, missed = chain(data, bounds, "TFRecord", cuts(rng, bounds, 120, "beside"), how, 600)
        late += missed
    assert late > 0  # a true start passed over because its record is over max_record


# ----------------------------------------------------------------------------- the finder


def test_the_line_finder() -> None:
    data = b"ab\r\n\ncd\nlast"
    expected = {0: 0, 1: 4, 3: 4, 4: 4, 5: 5, 6: 8, 8: 8, 9: len(data), len(data): len(data)}
    for at, boundary in expected.items():
        for step in (1, 2, len(data)):
            finder = StartFinder("Line", at, len(data), 1)
            assert finder.read_from == (at - 1 if 0 < at < len(data) else at)
            got = None
            for i in range(finder.read_from, len(data), step):
                got = finder.feed(data[i : i + step])
                if got is not None:
                    break
            assert (finder.finish() if got is None else got) == boundary, (at, step)
    finder = StartFinder("Line", 0, 10, 1)
    assert finder.boundary == 0 and finder.feed(b"") == 0
    assert StartFinder("Line", 20, 10, 1).boundary == 10


def test_the_recordio_finder_wants_an_aligned_record_start_that_fits() -> None:
    unaligned = b"\x00" * 5 + rio_frame(b"abcd") + b"\x00" * 3  # a frame at byte 5
    middle = struct.pack("<II", MAGIC, (2 << 29) | 4) + b"abcd"  # cflag 2
    too_long = struct.pack("<II", MAGIC, 1000)
    real = rio_frame(b"hello", 1)
    data = unaligned + middle + too_long + real
    finder = StartFinder("RecordIO", 1, len(data), 1)
    assert finder.read_from == 4
    assert finder.feed(data[4:]) == len(data) - len(real)
    for at in range(1, 9):
        assert find(data, "RecordIO", at, "bytes1", random.Random()) == len(data) - len(real)
    # the last frame must fit in the object: one byte short, and there is none
    finder = StartFinder("RecordIO", 1, len(data) - 1, 1)
    assert finder.feed(data[4:-1]) is None and finder.finish() == len(data) - 1
    assert StartFinder("RecordIO", 9, 10, 1).boundary == 10  # no aligned offset left


def test_the_tfrecord_finder_checks_both_crcs_and_the_fit() -> None:
    good_len_bad_data = bytearray(tf_frame(b"payload"))
    good_len_bad_data[-1] ^= 1
    real = tf_frame(b"real one")
    data = b"\x00" * 40 + bytes(good_len_bad_data) + b"\x01\x00\x00" + real
    at_real = len(data) - len(real)
    for how in ("whole", "bytes1", "few"):
        assert find(data, "TFRecord", 1, how, random.Random(how)) == at_real
    assert find(data, "TFRecord", 1, "whole", random.Random(), max_record=7) == len(data)
    finder = StartFinder("TFRecord", 1, len(data) - 1, BIG)  # the real frame does not fit
    assert finder.feed(data[1:-1]) is None and finder.finish() == len(data) - 1


def test_the_tfrecord_finder_holds_one_candidate_and_a_chunk() -> None:
    data, _ = tfrecord_stream(400_000, seed=4)
    for max_record in (700, 50_000):
        rng = random.Random(max_record)
        for at in [rng.randrange(len(data)) for _ in range(30)]:
            finder = StartFinder("TFRecord", at, len(data), max_record)
            for chunk in chunks(data, at, "random", rng):
                if finder.feed(chunk) is not None:
                    break
                assert finder.held <= max_record + 16
    # a valid header announcing a frame over max_record is passed over, not held
    head = struct.pack("<Q", 5000)
    head += struct.pack("<I", crc32c.masked(head))
    finder = StartFinder("TFRecord", 1, 10 << 20, 1000)
    assert finder.feed(b"x" + head + b"y" * 6000) is None and finder.held < 12
    finder = StartFinder("TFRecord", 1, 10 << 20, 5000)  # within max_record: held
    assert finder.feed(b"x" + head + b"y" * 3000) is None and finder.held == 3012


@pytest.mark.parametrize("kind", KINDS)
def test_a_shard_start_in_the_last_bytes_is_the_end(kind: str) -> None:
    data, bounds = BUILDERS[kind](30_000, seed=2)
    ats = [len(data) - 1, len(data), len(data) + 3]
    if kind == "Line":  # no payload to be fooled by: anywhere in the last record
        ats.append(bounds[-2] + 1)
    for at in ats:
        assert find(data, kind, at, "random", random.Random(at)) == len(data)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="SplitType='None'"):
        StartFinder("None", 0, 10, 10)
    with pytest.raises(ValueError, match="SplitType='RecordIo'"):
        RecordWalk("RecordIo", 0, 10)
    with pytest.raises(ValueError, match="at=-1"):
        StartFinder("Line", -1, 10, 10)
    with pytest.raises(ValueError, match="max_record=0"):
        StartFinder("TFRecord", 0, 10, 0)
