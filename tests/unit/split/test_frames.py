"""The split tests' own frame builders, checked against the formats' published vectors."""

from __future__ import annotations

from tests.support.split import MAGIC_BYTES, rio_frame, rio_record, tf_frame


def test_tfrecord_builder_matches_spec_vectors() -> None:
    assert tf_frame(b"").hex() == "0000000000000000" + "29039807" + "d8ea82a2"
    assert tf_frame(b"hello").hex() == "0500000000000000eab2043e68656c6c6fbb1f1c19"


def test_recordio_builder_pads_and_splits_at_the_magic() -> None:
    assert rio_frame(b"abc").hex() == "0a23d7ce" + "03000000" + "61626300"
    assert rio_frame(b"", 3).hex() == "0a23d7ce" + "00000060"
    frames = rio_record(b"abcd" + MAGIC_BYTES + b"efg")
    assert frames == rio_frame(b"abcd", 1) + rio_frame(b"efg", 3)
