"""Record boundaries on bodies (``make_splitter(..., bounds=True)``, ``Body.bounds``;
docs/design.md §2.4), over both twins.

Generated inputs (seeded, so a failure names its case) of every split type, cut into
chunks anywhere, with and without a bound and a cap on records:

* without the flag every body's ``bounds`` is ``None`` and the bodies are those of the
  call forms that never had the flag;
* with it the bodies are the same but for ``bounds``, set exactly on whole bounded
  MultiRecord bodies of Line, RecordIO and TFRecord: one little-endian uint32 a record,
  strictly increasing, the last ``end - start``;
* each slice ``data[bounds[i-1]:bounds[i]]`` is one record: for Line a line; for
  RecordIO and TFRecord a SingleRecord splitter finds exactly one record in it, and
  those payloads are what a SingleRecord splitter finds in the whole input, in order;
* the compiled splitters and the pure twin give identical bounds (and errors).

The generators of ``tests/support/split.py`` build the frames; these tests hold the
records as they were generated too, so the slices are compared with them.
"""

from __future__ import annotations

import importlib
import random
import struct
from types import ModuleType
from typing import Any

import pytest

from tests.support.split import MAGIC_BYTES, cut, random_cuts, rio_frame, rio_record, tf_frame

KINDS = ["Line", "RecordIO", "TFRecord"]
ALL_KINDS = [*KINDS, "None"]
STRATEGIES = ["MultiRecord", "SingleRecord"]


def records(rng: random.Random, kind: str, count: int) -> list[bytes]:
    """``count`` records of ``kind``, each exactly as it sits in the file."""
    out = []
    for _ in range(count):
        n = rng.choice([0, 1, 4, rng.randrange(0, 40), rng.randrange(0, 200)])
        if kind == "Line":
            out.append(bytes(rng.choice(b"ab,\r") for _ in range(n)) + b"\n")
        elif kind == "TFRecord":
            out.append(tf_frame(rng.randbytes(n)))
        elif kind == "None":
            out.append(rng.randbytes(n))
        elif rng.random() < 0.2:  # a record in parts (cflag 1, 2..., 3)
            pieces = [rng.randbytes(rng.randrange(0, 9)) for _ in range(rng.randrange(2, 5))]
            flags = [1] + [2] * (len(pieces) - 2) + [3]
            out.append(b"".join(rio_frame(p, f) for p, f in zip(pieces, flags, strict=True)))
        elif rng.random() < 0.15 and n >= 8:  # an aligned magic word: split by the writer
            at = 4 * rng.randrange(0, n // 4)
            out.append(rio_record((rng.randbytes(at) + MAGIC_BYTES + rng.randbytes(n))[:n]))
        else:
            out.append(rio_record(rng.randbytes(n)))
    if kind == "Line" and out and rng.random() < 0.3:
        out[-1] = out[-1][:-1] or b"x"  # a final line without a newline is a record too
    return out


def case(rng: random.Random, kind: str) -> tuple[list[bytes], list[bytes], int, int]:
    """Records, the input cut into chunks, a bound and a cap."""
    spans = records(rng, kind, rng.choice([0, 1, 2, rng.randrange(0, 20), rng.randrange(0, 60)]))
    data = b"".join(spans)
    biggest = max(map(len, spans), default=1)
    bound = rng.choice([0, biggest, biggest + rng.randrange(0, 300), rng.randrange(1, 64), 1 << 20])
    cap = rng.choice([0, 0, 1, 2, rng.randrange(1, 12)])
    return spans, cut(data, random_cuts(rng, len(data))), bound, cap


def bodies(
    twin: ModuleType,
    kind: str,
    strategy: str,
    bound: int,
    chunks: list[bytes],
    cap: int,
    *flag: bool,
    **flags: bool,
) -> list[Any]:
    """The bodies (and parts), or the error as the last item."""
    splitter = twin.make_splitter(kind, strategy, bound, cap, *flag, **flags)
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += splitter.feed(chunk)
        out += splitter.finish()
    except ValueError as error:
        out.append((type(error).__name__, getattr(error, "offset", None), str(error)))
    return out


def shape(items: list[Any]) -> list[Any]:
    """Each body as a tuple, ``bounds`` left out (an error as it is)."""
    return [
        item
        if isinstance(item, tuple)
        else (bytes(item.data), item.start, item.end, item.records, item.first, item.last)
        for item in items
    ]


def with_bounds(items: list[Any]) -> list[Any]:
    return [item if isinstance(item, tuple) else (*shape([item])[0], item.bounds) for item in items]


def ends(bounds: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(bounds) // 4}I", bounds))


def slices(body: Any) -> list[bytes]:
    previous, out = 0, []
    for end in ends(body.bounds):
        out.append(body.data[previous:end])
        previous = end
    return out


def eligible(kind: str, strategy: str, bound: int) -> bool:
    return kind != "None" and strategy == "MultiRecord" and bound > 0


# ----------------------------------------------------------------------------- (a), (b)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_without_the_flag_bounds_are_none_and_bodies_unchanged(
    splitters_twin: ModuleType, kind: str, strategy: str
) -> None:
    rng = random.Random(f"off-{kind}-{strategy}")
    for number in range(150):
        spans, chunks, bound, cap = case(rng, kind)
        where = (number, kind, strategy, bound, cap, [len(c) for c in chunks])
        before = bodies(splitters_twin, kind, strategy, bound, chunks, cap)  # the old form
        for off in (
            bodies(splitters_twin, kind, strategy, bound, chunks, cap, False),
            bodies(splitters_twin, kind, strategy, bound, chunks, cap, bounds=False),
        ):
            assert all(isinstance(b, tuple) or b.bounds is None for b in off), where
            assert shape(off) == shape(before), where


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_the_flag_only_bounds_change_and_only_on_whole_multirecord_bodies(
    splitters_twin: ModuleType, kind: str, strategy: str
) -> None:
    rng = random.Random(f"on-{kind}-{strategy}")
    set_on = 0
    for number in range(150):
        spans, chunks, bound, cap = case(rng, kind)
        where = (number, kind, strategy, bound, cap, [len(c) for c in chunks])
        off = bodies(splitters_twin, kind, strategy, bound, chunks, cap)
        on = bodies(splitters_twin, kind, strategy, bound, chunks, cap, bounds=True)
        assert shape(on) == shape(off), where
        for body in on:
            if isinstance(body, tuple):
                continue
            if eligible(kind, strategy, bound):
                assert body.first and body.last and isinstance(body.bounds, bytes), where
                set_on += 1
            else:
                assert body.bounds is None, where
    assert set_on > 100 or not eligible(kind, strategy, 1)


# ----------------------------------------------------------------------------- (c), (d)


@pytest.mark.parametrize("kind", KINDS)
def test_bounds_are_one_increasing_uint32_a_record_ending_at_the_body_end(
    splitters_twin: ModuleType, kind: str
) -> None:
    rng = random.Random(f"shape-{kind}")
    seen = 0
    for number in range(300):
        spans, chunks, bound, cap = case(rng, kind)
        bound = max(bound, *map(len, spans), 1)  # every record fits: no error
        where = (number, kind, bound, cap, [len(c) for c in chunks])
        for body in bodies(splitters_twin, kind, "MultiRecord", bound, chunks, cap, bounds=True):
            assert not isinstance(body, tuple), (where, body)  # whole records: no error
            values = ends(body.bounds)
            assert len(body.bounds) == 4 * body.records, where
            assert all(a < b for a, b in zip([0, *values], values, strict=False)), where
            assert values[-1] == body.end - body.start == len(body.data), where
            seen += 1
    assert seen > 300


@pytest.mark.parametrize("kind", KINDS)
def test_each_slice_is_one_record_in_input_order(splitters_twin: ModuleType, kind: str) -> None:
    """The slices of all bodies, in order, are the generated records, one each; and by
    the format's own rule each is one record."""
    rng = random.Random(f"slices-{kind}")
    for number in range(300):
        spans, chunks, bound, cap = case(rng, kind)
        bound = max(bound, *map(len, spans), 1)  # every record fits: no error
        where = (number, kind, bound, cap, [len(c) for c in chunks])
        out = bodies(splitters_twin, kind, "MultiRecord", bound, chunks, cap, bounds=True)
        cut_up = [piece for body in out for piece in slices(body)]
        assert cut_up == spans, where
        if kind == "Line":
            for body in out:
                pieces = slices(body)
                assert all(p.endswith(b"\n") for p in pieces[:-1]), where
                assert all(p.count(b"\n") == p.endswith(b"\n") for p in pieces), where
            continue
        single = []
        for piece in cut_up:
            alone = bodies(splitters_twin, kind, "SingleRecord", 1 << 20, [piece], 0)
            assert len(alone) == 1 and not isinstance(alone[0], tuple), (where, alone)
            single.append(bytes(alone[0].data))
        whole = bodies(splitters_twin, kind, "SingleRecord", 1 << 20, chunks, 0)
        assert single == [bytes(body.data) for body in whole], where


@pytest.mark.parametrize("kind", KINDS)
def test_bounds_of_bodies_of_thousands_of_records(splitters_twin: ModuleType, kind: str) -> None:
    """Bodies of thousands of records from large chunks (held by reference across many
    pieces in the compiled core): the bounds still match the records one by one."""
    rng = random.Random(f"many-{kind}")
    spans = []
    for _ in range(12):
        spans += records(rng, kind, 1000)
    if kind == "Line":
        spans = [span if span.endswith(b"\n") else span + b"\n" for span in spans]
        spans += [b"\n"] * 3000 + [b"end"]  # short records: thousands a body
    data = b"".join(spans)
    points = list(range(20_000, len(data), 20_000))
    for bound, cap in ((1 << 16, 0), (300_000, 0), (1 << 20, 5000), (len(data), 0)):
        out = bodies(splitters_twin, kind, "MultiRecord", bound, cut(data, points), cap, True)
        assert [piece for body in out for piece in slices(body)] == spans, (bound, cap)
        assert max(body.records for body in out) > 1100, (bound, cap)


# ----------------------------------------------------------------------------- (e)


@pytest.mark.compiled_only
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_twins_give_identical_bounds(kind: str) -> None:
    native = importlib.import_module("agent.split._splitters_c")
    pure = importlib.import_module("agent.split._splitters_py")
    rng = random.Random(f"twins-bounds-{kind}")
    errors = 0
    for number in range(1500):
        spans, chunks, bound, cap = case(rng, kind)
        if rng.random() < 0.2 and chunks:  # damage the input: the errors must agree too
            data = b"".join(chunks)
            at = rng.randrange(len(data) + 1)
            data = data[:at] if rng.random() < 0.5 else data[:at] + b"\0\1\2" + data[at:]
            chunks = cut(data, random_cuts(rng, len(data)))
        strategy = rng.choice(STRATEGIES)
        where = (number, kind, strategy, bound, cap, b"".join(chunks).hex())
        expected = bodies(pure, kind, strategy, bound, chunks, cap, bounds=True)
        got = bodies(native, kind, strategy, bound, chunks, cap, bounds=True)
        assert with_bounds(got) == with_bounds(expected), where
        errors += bool(expected) and isinstance(expected[-1], tuple)
    assert errors > 20


# ----------------------------------------------------------------------------- Packer


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("bound", [0, 50, 1 << 20])
def test_packer_bounds_are_record_ends_in_data(
    splitters_twin: ModuleType, strategy: str, bound: int
) -> None:
    """Packer bodies carry the ends of their records in ``data`` (the records joined,
    their input ranges apart), only for whole MultiRecord bodies and with the flag."""
    rng = random.Random(f"packer-{strategy}-{bound}")
    for number in range(100):
        cap = rng.choice([0, 1, 3])
        recs = [rng.randbytes(rng.randrange(1, 20)) + b"\n" for _ in range(rng.randrange(0, 40))]
        for flag in (False, True):
            packer = splitters_twin.Packer(strategy, bound, cap, bounds=flag)
            out, at = [], 0
            for rec in recs:
                out.append(packer.add(rec, at, at + len(rec) + 3))  # input ranges with gaps
                at += len(rec) + 7
            out = [body for body in [*out, packer.finish()] if body is not None]
            where = (number, strategy, bound, cap, flag)
            if not flag or strategy == "SingleRecord" or bound == 0:
                assert all(body.bounds is None for body in out), where
                continue
            pieces = [piece for body in out for piece in slices(body)]
            assert pieces == recs, where
            assert all(len(body.bounds) == 4 * body.records for body in out), where
