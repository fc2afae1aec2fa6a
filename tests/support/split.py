"""Frame builders and runners the split tests share (``unit/split/test_frames.py`` checks them).

The builders follow the formats as the references define them (dmlc-core recordio.h,
TensorFlow record_writer.cc) using the ``crc32c`` package from PyPI, independent of
the code under test.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import crc32c as reference

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)

Outcome = tuple[Any, ...]


def masked(data: bytes) -> int:
    c = reference.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tf_frame(payload: bytes, length: int | None = None) -> bytes:
    head = struct.pack("<Q", len(payload) if length is None else length)
    return head + struct.pack("<I", masked(head)) + payload + struct.pack("<I", masked(payload))


def rio_frame(payload: bytes, cflag: int = 0) -> bytes:
    lrec = (cflag << 29) | len(payload)
    return struct.pack("<II", MAGIC, lrec) + payload + b"\0" * (-len(payload) % 4)


def rio_record(payload: bytes) -> bytes:
    """A record as dmlc's writer stores it: split where the magic word sits aligned."""
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == MAGIC_BYTES]
    if not cuts:
        return rio_frame(payload)
    pieces, prev = [], 0
    for i in cuts:
        pieces.append(payload[prev:i])
        prev = i + 4
    pieces.append(payload[prev:])
    flags = [1] + [2] * (len(pieces) - 2) + [3]
    return b"".join(rio_frame(p, f) for p, f in zip(pieces, flags, strict=True))


def cut(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def random_cuts(rng: random.Random, n: int) -> list[int]:
    if n <= 1:
        return []
    mode = rng.random()
    if mode < 0.2:
        return list(range(1, n))  # 1-byte chunks
    if mode < 0.3:
        return []
    return rng.sample(range(1, n), min(n - 1, rng.randrange(1, 8)))


def body_tuple(body: Any) -> Outcome:
    return (bytes(body.data), body.start, body.end, body.records, body.first, body.last)


def split(
    module: ModuleType,
    split_type: str,
    strategy: str,
    bound: int,
    chunks: Sequence[bytes],
    max_records: int = 0,
) -> list[Outcome]:
    """Every body as a tuple, then the error (type name, offset, message) if one ends it."""
    splitter = module.make_splitter(split_type, strategy, bound, max_records)
    out: list[Outcome] = []
    try:
        for chunk in chunks:
            out.extend(body_tuple(b) for b in splitter.feed(chunk))
        out.extend(body_tuple(b) for b in splitter.finish())
    except ValueError as error:
        out.append((type(error).__name__, getattr(error, "offset", None), str(error)))
    return out


def error_of(outcome: list[Outcome]) -> Outcome:
    assert outcome and isinstance(outcome[-1][0], str), f"no error in {outcome!r}"
    return outcome[-1]
