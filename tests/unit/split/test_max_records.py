"""``Agent.MaxRecordsPerRequest`` in the splitters (docs/design.md §2.4), over both twins.

A MultiRecord body holds at most ``max_records`` records and at most the bound of bytes,
whichever comes first: each body is the longest run of whole records from its start that
keeps both. The reference below packs the records greedily from their known spans, so
every body is checked against it (start, end, record count), bounded and streamed, cut
into chunks anywhere; records are never lost or reordered (the bodies concatenate back
to the input).
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest

from tests.support.split import body_tuple, cut, random_cuts, rio_frame, rio_record, tf_frame

KINDS = ["Line", "RecordIO", "TFRecord"]


def records(rng: random.Random, kind: str, count: int) -> list[bytes]:
    """``count`` records of ``kind``, each exactly as it sits in the file."""
    out = []
    for _ in range(count):
        n = rng.choice([0, 1, 5, rng.randrange(0, 40), rng.randrange(0, 200)])
        if kind == "Line":
            out.append(bytes(rng.choice(b"ab,\r") for _ in range(n)) + b"\n")
        elif kind == "TFRecord":
            out.append(tf_frame(rng.randbytes(n)))
        elif rng.random() < 0.2 and n:  # a record in parts (cflag 1, 2..., 3)
            pieces = [rng.randbytes(rng.randrange(0, 9)) for _ in range(rng.randrange(2, 5))]
            flags = [1] + [2] * (len(pieces) - 2) + [3]
            out.append(b"".join(rio_frame(p, f) for p, f in zip(pieces, flags, strict=True)))
        else:
            out.append(rio_record(rng.randbytes(n)))
    if kind == "Line" and out and rng.random() < 0.3:
        out[-1] = out[-1][:-1] or b"x"  # a final line without a newline is a record too
    return out


def reference(spans: list[bytes], bound: int, cap: int) -> list[tuple[int, int, int]]:
    """(start, end, records) of each body: whole records, at most ``cap`` of them and at
    most ``bound`` bytes (0: no bound), a new body only when the next record would break
    either."""
    bodies: list[tuple[int, int, int]] = []
    start = end = count = 0
    for span in spans:
        full = count == cap or (bound and end - start + len(span) > bound)
        if count and full:
            bodies.append((start, end, count))
            start, count = end, 0
        end += len(span)
        count += 1
    if count:
        bodies.append((start, end, count))
    return bodies


def run(
    twin: ModuleType, kind: str, strategy: str, bound: int, cap: int, chunks: list[bytes]
) -> list[tuple[Any, ...]]:
    splitter = twin.make_splitter(kind, strategy, bound, cap)
    out = []
    for chunk in chunks:
        out += [body_tuple(body) for body in splitter.feed(chunk)]
    return out + [body_tuple(body) for body in splitter.finish()]


def whole_bodies(parts: list[tuple[Any, ...]], cap: int) -> list[tuple[bytes, int, int, int]]:
    """Streamed parts joined into bodies, checking how the parts of one body agree."""
    bodies: list[tuple[bytes, int, int, int]] = []
    data: list[bytes] = []
    start = None
    for chunk, part_start, end, count, first, last in parts:
        assert first == (start is None), parts
        if first:
            start = part_start
        assert part_start == start and 0 <= count <= cap, parts  # running count, capped
        data.append(chunk)
        if last:
            bodies.append((b"".join(data), part_start, end, count))
            data, start = [], None
    assert start is None, "a body was left open"
    return bodies


@pytest.mark.parametrize("kind", KINDS)
def test_bodies_hold_at_most_the_cap_and_at_most_the_bound(
    splitters_twin: ModuleType, kind: str
) -> None:
    rng = random.Random(f"cap-{kind}")
    rounds = 400 if splitters_twin.implementation() != "python" else 150
    for case in range(rounds):
        spans = records(rng, kind, rng.choice([0, 1, 2, rng.randrange(0, 40)]))
        data = b"".join(spans)
        bound = rng.choice([0, max(map(len, spans), default=1), rng.randrange(200, 2000), 1 << 20])
        cap = rng.choice([1, 2, 3, rng.randrange(1, 12), 1000])
        chunks = cut(data, random_cuts(rng, len(data)))
        where = (case, kind, bound, cap, [len(c) for c in chunks])
        out = run(splitters_twin, kind, "MultiRecord", bound, cap, chunks)
        if bound:
            assert all(first and last for *_, first, last in out), where
            bodies = [(data_, start, end, count) for data_, start, end, count, _, _ in out]
            assert all(len(body) <= bound for body, *_ in bodies), where
        else:
            bodies = whole_bodies(out, cap)
        assert [(s, e, n) for _, s, e, n in bodies] == reference(spans, bound, cap), where
        assert all(1 <= n <= cap for *_, n in bodies), where
        assert b"".join(body for body, *_ in bodies) == data, where  # nothing lost or moved
        assert all(body == data[s:e] for body, s, e, _ in bodies), where


@pytest.mark.parametrize("kind", KINDS)
def test_where_the_bound_binds_first_the_bodies_are_those_without_a_cap(
    splitters_twin: ModuleType, kind: str
) -> None:
    rng = random.Random(f"bound-first-{kind}")
    for case in range(60):
        spans = records(rng, kind, rng.randrange(1, 60))
        data = b"".join(spans)
        bound = rng.randrange(max(map(len, spans)), 3 * max(map(len, spans)) + 50)
        chunks = cut(data, random_cuts(rng, len(data)))
        uncapped = run(splitters_twin, kind, "MultiRecord", bound, 0, chunks)
        most = max(count for _, _, _, count, _, _ in uncapped)
        for cap in (most, most + 1, 10**6):
            capped = run(splitters_twin, kind, "MultiRecord", bound, cap, chunks)
            assert capped == uncapped, (case, kind, bound, cap)
        if most > 1:  # one record fewer and the cap binds: other bodies
            assert run(splitters_twin, kind, "MultiRecord", bound, most - 1, chunks) != uncapped


def test_a_cap_of_one_sends_each_record_as_it_is_in_the_file(splitters_twin: ModuleType) -> None:
    frames = [tf_frame(b"a"), tf_frame(b""), tf_frame(b"hello")]
    data = b"".join(frames)
    out = run(splitters_twin, "TFRecord", "MultiRecord", 1 << 20, 1, [data[:7], data[7:]])
    starts = [0, len(frames[0]), len(frames[0]) + len(frames[1])]
    assert out == [
        (frame, start, start + len(frame), 1, True, True)
        for frame, start in zip(frames, starts, strict=True)
    ]


def test_a_streamed_body_closes_after_its_last_record(splitters_twin: ModuleType) -> None:
    out = run(splitters_twin, "Line", "MultiRecord", 0, 2, [b"a\nb\nc", b"\nd\ne"])
    assert out == [
        (b"a\nb\n", 0, 4, 2, True, True),
        (b"c", 4, 5, 0, True, False),
        (b"\nd\n", 4, 8, 2, False, True),  # its second record ends it, mid-chunk
        (b"e", 8, 9, 0, True, False),
        (b"", 8, 9, 1, False, True),  # the final line without a newline counts
    ]
    # A body that ends with its chunk sends no empty part; nothing is left to close.
    assert run(splitters_twin, "Line", "MultiRecord", 0, 1, [b"a\n", b"b\n"]) == [
        (b"a\n", 0, 2, 1, True, True),
        (b"b\n", 2, 4, 1, True, True),
    ]


@pytest.mark.parametrize("kind", [*KINDS, "None"])
@pytest.mark.parametrize("bound", [0, 64, 1 << 20])
def test_single_record_and_none_are_unchanged_by_a_cap(
    splitters_twin: ModuleType, kind: str, bound: int
) -> None:
    rng = random.Random(f"unchanged-{kind}-{bound}")
    for _ in range(20):
        spans = records(rng, "Line" if kind == "None" else kind, rng.randrange(0, 20))
        data = b"".join(spans)
        if bound and kind == "None":
            data = data[:bound]
        elif bound:
            spans = [span for span in spans if len(span) <= bound]
            data = b"".join(spans)
        chunks = cut(data, random_cuts(rng, len(data)))
        for strategy in ("SingleRecord", "MultiRecord") if kind == "None" else ("SingleRecord",):
            plain = run(splitters_twin, kind, strategy, bound, 0, chunks)
            assert run(splitters_twin, kind, strategy, bound, 1, chunks) == plain
            assert run(splitters_twin, kind, strategy, bound, 3, chunks) == plain


def test_a_record_over_the_bound_still_fails_with_a_cap(splitters_twin: ModuleType) -> None:
    splitter = splitters_twin.make_splitter("Line", "MultiRecord", 8, 2)
    assert [body_tuple(b) for b in splitter.feed(b"ab\ncd\nef\n")] == [
        (b"ab\ncd\n", 0, 6, 2, True, True)
    ]
    with pytest.raises(ValueError, match="the record at byte 9 is 11 bytes"):
        splitter.feed(b"0123456789\n")


def test_packer_cuts_at_the_cap(splitters_twin: ModuleType) -> None:
    packer = splitters_twin.Packer("MultiRecord", 100, 2)
    done = [packer.add(b"r%d" % i, 3 * i, 3 * i + 3) for i in range(5)] + [packer.finish()]
    assert [body_tuple(b) for b in done if b is not None] == [
        (b"r0r1", 0, 6, 2, True, True),
        (b"r2r3", 6, 12, 2, True, True),
        (b"r4", 12, 15, 1, True, True),
    ]
    stream = splitters_twin.Packer("MultiRecord", 0, 2)
    parts = [stream.add(b"r%d" % i, 3 * i, 3 * i + 3) for i in range(3)] + [stream.finish()]
    assert [body_tuple(p) for p in parts if p is not None] == [
        (b"r0", 0, 3, 1, True, False),
        (b"r1", 0, 6, 2, False, True),
        (b"r2", 6, 9, 1, True, False),
        (b"", 6, 9, 1, False, True),
    ]


@pytest.mark.parametrize("cap", [-1, 1.5, "2", True, None])
def test_a_bad_cap_is_refused(splitters_twin: ModuleType, cap: object) -> None:
    with pytest.raises(ValueError, match=r"cannot split with max_records="):
        splitters_twin.make_splitter("Line", "MultiRecord", 1 << 20, cap)
    with pytest.raises(ValueError, match=r"cannot split with max_records="):
        splitters_twin.Packer("MultiRecord", 1 << 20, cap)
