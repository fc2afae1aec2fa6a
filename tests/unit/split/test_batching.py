"""Batching, streaming without a bound, memory, the packer, and the API's edges."""

from __future__ import annotations

import importlib
import pickle
import random
import tracemalloc
from types import ModuleType

import pytest

import agent.split
from agent.split import CorruptInputError, RecordTooLargeError, SplitError, SplitterStateError
from tests.support.split import (
    MAGIC_BYTES,
    body_tuple,
    cut,
    rio_frame,
    split,
    tf_frame,
)

MiB = 1 << 20


@pytest.mark.compiled_only
def test_portable_memrchr_agrees_with_rfind() -> None:
    native = importlib.import_module("agent.split._splitters_c")
    rng = random.Random(3)
    for _ in range(500):
        data = bytes(rng.choice(b"ab\n") for _ in range(rng.randrange(0, 70)))
        start = rng.randrange(0, 8)
        view = data[start:]
        assert native._portable_rfind(view, 10) == view.rfind(b"\n")


# ------------------------------------------------------------------ streaming (bound 0)


def streamed(twin: ModuleType, kind: str, strategy: str, chunks: list[bytes]) -> list[tuple]:
    """Check the parts' invariants and coalesce them into (data, start, end, records)."""
    splitter = twin.make_splitter(kind, strategy, 0)
    parts = [p for c in chunks for p in splitter.feed(c)] + splitter.finish()
    whole: list[tuple] = []
    current: list[bytes] = []
    start = records = end = -1
    for part in parts:
        assert isinstance(part.data, memoryview)
        if part.first:
            assert not current and start == -1
            start, records, end = part.start, 0, part.start
        assert part.start == start and part.end >= end and part.records >= records
        end, records = part.end, part.records
        current.append(bytes(part.data))
        if part.last:
            whole.append((b"".join(current), start, end, records))
            current, start, records = [], -1, -1
    assert start == -1, "a body was left open"
    return whole


@pytest.mark.parametrize("cuts", [[], [1, 2, 3, 9], list(range(1, 40))])
def test_unbounded_bodies_stream_in_parts(twin: ModuleType, cuts: list[int]) -> None:
    lines = b"a\r\n\nbb\nlast"
    chunks = cut(lines, [c for c in cuts if c < len(lines)])
    assert streamed(twin, "Line", "MultiRecord", chunks) == [(lines, 0, 11, 4)]
    assert streamed(twin, "None", "SingleRecord", chunks) == [(lines, 0, 11, 1)]
    assert streamed(twin, "Line", "SingleRecord", chunks) == [
        (b"a\r\n", 0, 3, 1),
        (b"\n", 3, 4, 1),
        (b"bb\n", 4, 7, 1),
        (b"last", 7, 11, 1),
    ]
    rio = rio_frame(b"a", 1) + rio_frame(b"bc", 2) + rio_frame(b"d", 3) + rio_frame(b"")
    chunks = cut(rio, [c for c in cuts if c < len(rio)])
    assert streamed(twin, "RecordIO", "SingleRecord", chunks) == [
        (MAGIC_BYTES.join([b"a", b"bc", b"d"]), 0, 36, 1),
        (b"", 36, 44, 1),
    ]
    assert streamed(twin, "RecordIO", "MultiRecord", chunks) == [(rio, 0, 44, 2)]
    tfr = tf_frame(b"hello") + tf_frame(b"")
    chunks = cut(tfr, [c for c in cuts if c < len(tfr)])
    assert streamed(twin, "TFRecord", "SingleRecord", chunks) == [
        (b"hello", 0, 21, 1),
        (b"", 21, 37, 1),
    ]
    assert streamed(twin, "TFRecord", "MultiRecord", chunks) == [(tfr, 0, 37, 2)]


def test_unbounded_parts_reference_the_chunk(twin: ModuleType) -> None:
    chunk = b"x" * 100
    (part,) = twin.make_splitter("None", "MultiRecord", 0).feed(chunk)
    assert part.data.obj is chunk and (part.first, part.last) == (True, False)


# ------------------------------------------------------------------------------ memory


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_petabyte_tfrecord_frame_streams_without_allocating(twin: ModuleType) -> None:
    zeros = bytes(64 * 1024)
    rounds = 1024 if twin.implementation() != "python" else 16  # 64 MiB; the pure twin 1 MiB
    header = tf_frame(b"", 1 << 50)[:12]

    def run() -> None:
        splitter = twin.make_splitter("TFRecord", "MultiRecord", 0)
        splitter.feed(header)
        for _ in range(rounds):
            splitter.feed(zeros)
        with pytest.raises(CorruptInputError, match="truncated"):
            splitter.finish()

    assert _peak(run) < 256 * 1024


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_an_endless_line_is_not_held(twin: ModuleType, strategy: str) -> None:
    chunk = b"y" * MiB

    def run() -> None:
        splitter = twin.make_splitter("Line", strategy, MiB)
        for _ in range(24):
            splitter.feed(chunk)
        with pytest.raises(RecordTooLargeError) as caught:
            splitter.finish()
        assert (caught.value.offset, caught.value.size) == (0, 24 * MiB)

    assert _peak(run) < 3 * MiB + 256 * 1024


def test_multirecord_holds_at_most_the_bound(twin: ModuleType) -> None:
    chunk = (b"z" * 99 + b"\n") * 10_000  # ~1 MB
    sizes: list[int] = []

    def run() -> None:
        splitter = twin.make_splitter("Line", "MultiRecord", MiB // 4)
        for _ in range(16):
            sizes.extend(len(b.data) for b in splitter.feed(chunk))
        sizes.extend(len(b.data) for b in splitter.finish())

    assert _peak(run) < 3 * MiB
    assert sum(sizes) == 16 * len(chunk) and max(sizes) <= MiB // 4


# ------------------------------------------------------------------------------ copies


@pytest.mark.compiled_only  # the pure twin copies
def test_a_body_that_is_a_whole_chunk_is_not_copied() -> None:
    twin = importlib.import_module("agent.split._splitters_c")
    chunk = b"one\ntwo\n" * 4096  # held by reference: large enough, and immutable
    splitter = twin.make_splitter("None", "MultiRecord", MiB)
    splitter.feed(chunk)
    (body,) = splitter.finish()
    assert body.data is chunk


def test_other_buffers_are_copied_when_held(twin: ModuleType) -> None:
    data = bytearray(b"first line\nsecond ")
    splitter = twin.make_splitter("Line", "MultiRecord", MiB)
    assert splitter.feed(data) == []
    data[:] = b"X" * len(data)  # the caller reuses its buffer
    splitter.feed(memoryview(b"line\n"))
    (body,) = splitter.finish()
    assert bytes(body.data) == b"first line\nsecond line\n" and body.records == 2


# ------------------------------------------------------------------------------ packer


def test_packer_packs_what_fits(twin: ModuleType) -> None:
    packer = twin.Packer("MultiRecord", 10)
    got = [packer.add(r, i * 10, i * 10 + 9) for i, r in enumerate([b"abcd", b"efgh", b"ij", b"k"])]
    got.append(packer.finish())
    assert [None if b is None else body_tuple(b) for b in got] == [
        None,
        None,
        None,
        (b"abcdefghij", 0, 29, 3, True, True),
        (b"k", 30, 39, 1, True, True),
    ]
    with pytest.raises(RecordTooLargeError) as caught:
        packer.add(b"x" * 11, 50, 70)
    assert caught.value.offset == 50 and caught.value.size == 11
    assert str(caught.value).startswith("the filtered record from byte 50 is 11 bytes")


def test_packer_single_and_unbounded(twin: ModuleType) -> None:
    single = twin.Packer("SingleRecord", 10)
    assert body_tuple(single.add(memoryview(b"ab"), 0, 5)) == (b"ab", 0, 5, 1, True, True)
    assert single.finish() is None
    stream = twin.Packer("MultiRecord", 0)
    parts = [stream.add(b"a", 0, 2), stream.add(b"b", 2, 4), stream.finish()]
    assert [body_tuple(p) for p in parts if p is not None] == [
        (b"a", 0, 2, 1, True, False),
        (b"b", 0, 4, 2, False, False),
        (b"", 0, 4, 2, False, True),
    ]
    assert twin.Packer("MultiRecord", 0).finish() is None


# ------------------------------------------------------------------------------ API


def test_bad_arguments_are_refused(twin: ModuleType) -> None:
    for args in [("Lines", "MultiRecord", 1), ("Line", "Multi", 1), ("Line", "MultiRecord", -1)]:
        with pytest.raises(ValueError, match="cannot split with SplitType"):
            twin.make_splitter(*args)
    with pytest.raises(ValueError):
        twin.make_splitter("Line", "MultiRecord", 1.5)
    with pytest.raises(ValueError):
        twin.Packer("Whatever", 1)


def test_a_splitter_is_single_use_and_repeats_its_error(twin: ModuleType) -> None:
    splitter = twin.make_splitter("Line", "MultiRecord", 4)
    splitter.feed(b"ab")
    splitter.finish()
    with pytest.raises(SplitterStateError):
        splitter.feed(b"x")
    failing = twin.make_splitter("RecordIO", "MultiRecord", 4)
    with pytest.raises(CorruptInputError) as first:
        failing.feed(b"\0" * 8)
    with pytest.raises(CorruptInputError) as again:
        failing.finish()
    assert again.value is first.value


def test_errors_carry_offsets_files_and_pickle() -> None:
    error = RecordTooLargeError(12, "the record at byte 12 is too big", 99, 10)
    assert isinstance(error, SplitError) and isinstance(error, ValueError)
    assert error.in_file("s3://b/k.rec") == "s3://b/k.rec: the record at byte 12 is too big"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.offset, copy.size, copy.limit, str(copy)) == (12, 99, 10, str(error))
    corrupt = pickle.loads(pickle.dumps(CorruptInputError(3, "bad")))
    assert type(corrupt) is CorruptInputError and corrupt.offset == 3


def test_the_package_face() -> None:
    assert agent.split.max_payload_bytes(6) == 6 * MiB
    assert agent.split.max_payload_bytes(0) == 0
    assert split(agent.split, "Line", "SingleRecord", 5, [b"a\nb"])[-1][:4] == (b"b", 2, 3, 1)


@pytest.fixture
def twin(splitters_twin: ModuleType) -> ModuleType:
    return splitters_twin
