"""CRC-32C: known vectors and agreement with an independent implementation, on both twins."""

from __future__ import annotations

import random
from types import ModuleType

import crc32c as reference  # the independent implementation from PyPI
import pytest


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0), (b"123456789", 0xE3069283), (b"\x00" * 32, 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43)],
)
def test_known_values(crc32c_twin: ModuleType, data: bytes, expected: int) -> None:
    assert crc32c_twin.value(data) == expected


def test_tfrecord_vectors(crc32c_twin: ModuleType) -> None:
    # docs/design.md §2.3: the empty payload's masked length CRC and "hello"'s two CRCs.
    assert crc32c_twin.masked(b"\x00" * 8).to_bytes(4, "little").hex() == "29039807"
    assert crc32c_twin.masked(b"").to_bytes(4, "little").hex() == "d8ea82a2"
    length = (5).to_bytes(8, "little")
    assert crc32c_twin.masked(length).to_bytes(4, "little").hex() == "eab2043e"
    assert crc32c_twin.masked(b"hello").to_bytes(4, "little").hex() == "bb1f1c19"


def test_matches_reference_and_continues(crc32c_twin: ModuleType) -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 300))
        cut = rng.randrange(0, len(data) + 1)
        assert crc32c_twin.value(data) == reference.crc32c(data)
        assert crc32c_twin.value(data[cut:], crc32c_twin.value(data[:cut])) == reference.crc32c(
            data
        )


def test_accepts_any_buffer(crc32c_twin: ModuleType) -> None:
    data = b"some bytes, unaligned" * 3
    expected = reference.crc32c(data)
    assert crc32c_twin.value(bytearray(data)) == expected
    assert crc32c_twin.value(memoryview(b"x" + data)[1:]) == expected
