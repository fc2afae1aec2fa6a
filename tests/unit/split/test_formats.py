"""Each format as docs/design.md §2 defines it, and each hostile input failing at its exact offset.

Every case runs over both twins and over two cuttings of the input: whole, and one byte
at a time; the outcome must not depend on the cutting.
"""

from __future__ import annotations

import struct
from types import ModuleType

import pytest

from tests.support.split import (
    MAGIC_BYTES,
    Outcome,
    error_of,
    rio_frame,
    rio_record,
    split,
    tf_frame,
)

MiB = 1 << 20


def outcome(twin: ModuleType, kind: str, strategy: str, bound: int, data: bytes) -> list[Outcome]:
    """The bodies, fed one byte at a time, then the error if any.

    Fed whole, the outcome must be the same, except that bodies completed in the call
    that raises are not returned.
    """
    whole = split(twin, kind, strategy, bound, [data])
    bytewise = split(twin, kind, strategy, bound, [data[i : i + 1] for i in range(len(data))])
    if whole and isinstance(whole[-1][0], str):
        assert whole[-1] == bytewise[-1]
        whole, bytewise = whole[:-1], bytewise[:-1]
        assert bytewise[: len(whole)] == whole
        return bytewise + [error_of(split(twin, kind, strategy, bound, [data]))]
    assert whole == bytewise
    return whole


def failure(twin: ModuleType, kind: str, strategy: str, bound: int, data: bytes) -> Outcome:
    """The error, which must not depend on how the input is cut."""
    whole = error_of(split(twin, kind, strategy, bound, [data]))
    bytewise = split(twin, kind, strategy, bound, [data[i : i + 1] for i in range(len(data))])
    assert error_of(bytewise) == whole
    return whole


def bodies(twin: ModuleType, kind: str, strategy: str, bound: int, data: bytes) -> list[Outcome]:
    """(data, start, end, records) of each body, for bounded splitting."""
    result = outcome(twin, kind, strategy, bound, data)
    assert all(item[4] and item[5] for item in result), result
    return [item[:4] for item in result]


# ------------------------------------------------------------------------------ Line

LINES = b"a\r\n\nbb\nlast"


def test_line_records_keep_cr_empty_lines_and_the_unterminated_end(twin: ModuleType) -> None:
    assert bodies(twin, "Line", "SingleRecord", MiB, LINES) == [
        (b"a\r\n", 0, 3, 1),
        (b"\n", 3, 4, 1),
        (b"bb\n", 4, 7, 1),
        (b"last", 7, 11, 1),
    ]
    assert bodies(twin, "Line", "MultiRecord", MiB, LINES) == [(LINES, 0, 11, 4)]
    assert bodies(twin, "Line", "MultiRecord", MiB, b"x\n\n") == [(b"x\n\n", 0, 3, 2)]


def test_line_multirecord_cuts_at_the_last_newline_that_fits(twin: ModuleType) -> None:
    assert bodies(twin, "Line", "MultiRecord", 7, LINES) == [
        (b"a\r\n\nbb\n", 0, 7, 3),
        (b"last", 7, 11, 1),
    ]
    assert bodies(twin, "Line", "MultiRecord", 6, LINES) == [
        (b"a\r\n\n", 0, 4, 2),
        (b"bb\n", 4, 7, 1),
        (b"last", 7, 11, 1),
    ]


@pytest.mark.parametrize("kind", ["None", "Line", "RecordIO", "TFRecord"])
@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
@pytest.mark.parametrize("bound", [0, 10])
def test_empty_input_sends_nothing(twin: ModuleType, kind: str, strategy: str, bound: int) -> None:
    assert outcome(twin, kind, strategy, bound, b"") == []


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_line_record_over_the_bound_names_offset_and_both_sizes(
    twin: ModuleType, strategy: str
) -> None:
    data = b"ok\n" + b"x" * 20 + b"\nend\n"
    result = outcome(twin, "Line", strategy, 10, data)
    assert result[0][:4] == (b"ok\n", 0, 3, 1)
    assert error_of(result) == (
        "RecordTooLargeError",
        3,
        "the record at byte 3 is 21 bytes, larger than the 10-byte bound; raise "
        "MaxPayloadInMB (0 streams without a bound) or make the record smaller",
    )
    # Without a newline the record runs to the end of the input.
    result = outcome(twin, "Line", strategy, 10, b"ok\n" + b"x" * 20)
    assert error_of(result)[1:] == (3, error_of(result)[2])
    assert "the record at byte 3 is 20 bytes" in error_of(result)[2]


def test_line_record_exactly_at_the_bound_fits(twin: ModuleType) -> None:
    assert bodies(twin, "Line", "MultiRecord", 4, b"abc\nabcd") == [
        (b"abc\n", 0, 4, 1),
        (b"abcd", 4, 8, 1),
    ]
    assert bodies(twin, "Line", "SingleRecord", 4, b"abc\nabcd") == [
        (b"abc\n", 0, 4, 1),
        (b"abcd", 4, 8, 1),
    ]


# ------------------------------------------------------------------------------ None


def test_none_is_one_body_and_an_object_over_the_bound_fails(twin: ModuleType) -> None:
    for strategy in ("MultiRecord", "SingleRecord"):
        assert bodies(twin, "None", strategy, 5, b"whole") == [(b"whole", 0, 5, 1)]
    error = error_of(outcome(twin, "None", "MultiRecord", 3, b"whole"))
    assert error[:2] == ("RecordTooLargeError", 0)
    assert error[2].startswith("the object is 5 bytes, larger than the 3-byte bound")
    big = error_of(split(twin, "None", "MultiRecord", 2 * MiB, [b"\0" * MiB] * 2 + [b"!"]))
    assert "larger than the 2097152-byte bound (MaxPayloadInMB=2)" in big[2]


# -------------------------------------------------------------------------- RecordIO

JOINED = b"abcd" + MAGIC_BYTES + b"efg"
RIO = rio_frame(b"abc") + rio_record(JOINED) + rio_frame(b"")  # [0,12) [12,36) [36,44)


def test_recordio_singlerecord_sends_payloads_with_parts_joined_by_the_magic(
    twin: ModuleType,
) -> None:
    assert rio_record(JOINED) == rio_frame(b"abcd", 1) + rio_frame(b"efg", 3)
    assert bodies(twin, "RecordIO", "SingleRecord", MiB, RIO) == [
        (b"abc", 0, 12, 1),
        (JOINED, 12, 36, 1),
        (b"", 36, 44, 1),
    ]
    three = rio_frame(b"a", 1) + rio_frame(b"bc", 2) + rio_frame(b"", 2) + rio_frame(b"d", 3)
    payload = MAGIC_BYTES.join([b"a", b"bc", b"", b"d"])
    assert bodies(twin, "RecordIO", "SingleRecord", MiB, three) == [(payload, 0, 44, 1)]


def test_recordio_multirecord_keeps_framing_and_never_splits_a_record(twin: ModuleType) -> None:
    assert bodies(twin, "RecordIO", "MultiRecord", MiB, RIO) == [(RIO, 0, 44, 3)]
    assert bodies(twin, "RecordIO", "MultiRecord", 24, RIO) == [
        (RIO[:12], 0, 12, 1),
        (RIO[12:36], 12, 36, 1),
        (RIO[36:], 36, 44, 1),
    ]


def test_recordio_bounds_apply_to_what_is_sent(twin: ModuleType) -> None:
    single = error_of(outcome(twin, "RecordIO", "SingleRecord", 10, RIO))
    assert single[:2] == ("RecordTooLargeError", 12)
    assert single[2].startswith("the record at byte 12 has a 11-byte payload, larger than")
    multi = error_of(outcome(twin, "RecordIO", "MultiRecord", 20, RIO))
    assert multi[:2] == ("RecordTooLargeError", 12)
    assert multi[2].startswith("the record at byte 12 is 24 bytes, larger than the 20-byte")
    # A multi-part record over the bound is followed to its last part for its size.
    long = rio_frame(b"a" * 8, 1) + rio_frame(b"b" * 8, 2) + rio_frame(b"c" * 8, 3)
    assert "is 48 bytes" in error_of(outcome(twin, "RecordIO", "MultiRecord", 20, long))[2]
    assert "32-byte payload" in error_of(outcome(twin, "RecordIO", "SingleRecord", 20, long))[2]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


RIO_HOSTILE = [
    (
        _flip(RIO, 13),
        12,
        "RecordIO frame at byte 12 starts with 0xced7630a where the magic 0xced7230a "
        "belongs: the input is not dmlc RecordIO, or is corrupt here",
    ),
    (
        RIO[:12] + rio_frame(b"abcdef")[:5],
        12,
        "RecordIO frame at byte 12 is truncated: the input ends 5 bytes into its 8-byte header",
    ),
    (
        RIO[:12] + rio_frame(b"abcdef")[:14],
        12,
        "RecordIO frame at byte 12 is truncated: its header announces 6 payload bytes "
        "(a 16-byte frame) but the input ends 14 bytes into it",
    ),
    (
        rio_frame(b"x", 2),
        0,
        "RecordIO frame at byte 0 has cflag 2 (a middle part of a multi-part record) but no "
        "multi-part record is open",
    ),
    (RIO[:12] + rio_frame(b"x", 3), 12, "RecordIO frame at byte 12 has cflag 3 (the last part"),
    (
        rio_frame(b"a", 1) + rio_frame(b"b", 0),
        12,
        "RecordIO frame at byte 12 has cflag 0 (a whole record) while the multi-part record "
        "opened at byte 0 has not closed",
    ),
    (
        rio_frame(b"a", 1) + rio_frame(b"b", 1),
        12,
        "RecordIO frame at byte 12 has cflag 1 (the first part) while the multi-part",
    ),
    (
        RIO[:12] + rio_frame(b"a", 1) + rio_frame(b"b", 2),
        12,
        "RecordIO multi-part record at byte 12 never closes: the input ends before its last "
        "part (cflag 3)",
    ),
    (
        RIO[:12] + struct.pack("<II", 0xCED7230A, (5 << 29) | 1) + b"x\0\0\0",
        12,
        "RecordIO frame at byte 12 has cflag 5; valid values are 0 to 3",
    ),
]


@pytest.mark.parametrize(("data", "offset", "message"), RIO_HOSTILE)
@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
@pytest.mark.parametrize("bound", [0, MiB])
def test_recordio_hostile_input(
    twin: ModuleType, data: bytes, offset: int, message: str, strategy: str, bound: int
) -> None:
    name, at, text = failure(twin, "RecordIO", strategy, bound, data)
    assert (name, at) == ("CorruptInputError", offset)
    assert text.startswith(message)


# -------------------------------------------------------------------------- TFRecord

TFR = tf_frame(b"") + tf_frame(b"hello") + tf_frame(b"x" * 30)  # [0,16) [16,37) [37,83)


def test_tfrecord_bodies(twin: ModuleType) -> None:
    assert bodies(twin, "TFRecord", "SingleRecord", MiB, TFR) == [
        (b"", 0, 16, 1),
        (b"hello", 16, 37, 1),
        (b"x" * 30, 37, 83, 1),
    ]
    assert bodies(twin, "TFRecord", "MultiRecord", 46, TFR) == [
        (TFR[:37], 0, 37, 2),
        (TFR[37:], 37, 83, 1),
    ]
    error = error_of(outcome(twin, "TFRecord", "MultiRecord", 45, TFR))
    assert error[:2] == ("RecordTooLargeError", 37)
    assert error[2].startswith("the record at byte 37 is 46 bytes, larger than the 45-byte")


PETA = 1 << 50
PETA_HEADER = tf_frame(b"", PETA)[:12]

TF_HOSTILE = [
    (
        _flip(TFR, 16 + 9),
        16,
        "TFRecord frame at byte 16 has a bad length checksum (stored 0x3e04f2ea, computed "
        "0x3e04b2ea): the input is not TFRecord, or is corrupt here",
    ),
    (
        _flip(TFR, 16 + 12),
        16,
        "TFRecord frame at byte 16 has a bad payload checksum (stored 0x191c1fbb, computed "
        "0x46484519 over its 5 payload bytes): the record is corrupt",
    ),
    (_flip(TFR, 36), 16, "TFRecord frame at byte 16 has a bad payload checksum"),
    (
        TFR[:16] + tf_frame(b"hello")[:7],
        16,
        "TFRecord frame at byte 16 is truncated: the input ends 7 bytes into its 12-byte header",
    ),
    (
        TFR[:16] + tf_frame(b"hello")[:19],
        16,
        "TFRecord frame at byte 16 is truncated: its header announces 5 payload bytes (a 21-byte "
        "frame) but the input ends 19 bytes into it",
    ),
]


@pytest.mark.parametrize(("data", "offset", "message"), TF_HOSTILE)
@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
@pytest.mark.parametrize("bound", [0, MiB])
def test_tfrecord_hostile_input(
    twin: ModuleType, data: bytes, offset: int, message: str, strategy: str, bound: int
) -> None:
    name, at, text = failure(twin, "TFRecord", strategy, bound, data)
    assert (name, at) == ("CorruptInputError", offset)
    assert text.startswith(message)


@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_tfrecord_petabyte_length_fails_at_its_header_with_a_bound(
    twin: ModuleType, strategy: str
) -> None:
    splitter = twin.make_splitter("TFRecord", strategy, 6 * MiB)
    assert splitter.feed(TFR[:16]) == [] or strategy == "SingleRecord"
    with pytest.raises(ValueError) as caught:
        splitter.feed(PETA_HEADER)  # fails here, before any payload arrives
    size = PETA + 16 if strategy == "MultiRecord" else PETA
    assert caught.value.offset == 16
    assert caught.value.size == size
    assert caught.value.limit == 6 * MiB
    assert "(MaxPayloadInMB=6)" in str(caught.value)


def test_tfrecord_petabyte_length_without_a_bound_is_truncated_at_the_end(
    twin: ModuleType,
) -> None:
    splitter = twin.make_splitter("TFRecord", "MultiRecord", 0)
    splitter.feed(PETA_HEADER)
    splitter.feed(b"\0" * 1000)
    with pytest.raises(ValueError) as caught:
        splitter.finish()
    assert caught.value.offset == 0
    assert str(caught.value) == (
        f"TFRecord frame at byte 0 is truncated: its header announces {PETA} payload bytes "
        f"(a {PETA + 16}-byte frame) but the input ends 1012 bytes into it"
    )


@pytest.fixture
def twin(splitters_twin: ModuleType) -> ModuleType:
    return splitters_twin


@pytest.mark.parametrize("length", [(1 << 63) - 1, (1 << 64) - 1])
@pytest.mark.parametrize("strategy", ["MultiRecord", "SingleRecord"])
def test_tfrecord_lengths_at_the_top_of_uint64(
    twin: ModuleType, length: int, strategy: str
) -> None:
    header = tf_frame(b"", length)[:12]
    bounded = failure(twin, "TFRecord", strategy, MiB, header)
    size = length + 16 if strategy == "MultiRecord" else length
    assert bounded[:2] == ("RecordTooLargeError", 0) and f" {size}" in bounded[2]
    streamed = failure(twin, "TFRecord", strategy, 0, header + b"abc")
    assert streamed[2] == (
        f"TFRecord frame at byte 0 is truncated: its header announces {length} payload bytes "
        f"(a {length + 16}-byte frame) but the input ends 15 bytes into it"
    )
