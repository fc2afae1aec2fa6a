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


# ----------------------------------------------------------------------------- shard inputs
#
# Whole inputs for the shard tests (``unit/split/test_shards.py``) and the sharded runs:
# each builder returns ``(data, bounds)`` where ``bounds`` is every offset a record starts
# at, in order, followed by ``len(data)`` (so record ``i`` is
# ``data[bounds[i]:bounds[i + 1]]``). Seeded, so the same arguments give the same bytes;
# built from pools of pre-made bytes sliced per record, about 16 MiB a second.

_PRINTABLE = bytes(range(0x20, 0x7F))
_TO_TEXT = bytes(_PRINTABLE[i % len(_PRINTABLE)] for i in range(256))
_POOL_BYTES = 1 << 20


def line_stream(
    size: int, seed: int = 0, *, long_lines: int = 3, long_bytes: int = 300 * 1024
) -> tuple[bytes, list[int]]:
    """Exactly ``size`` bytes of lines ending in ``\\n`` or ``\\r\\n`` (about half each), one in
    ten empty, most 0-400 bytes, plus ``long_lines`` lines of ``min(long_bytes, size // 8)``
    bytes at random places. The last line is cut where ``size`` falls, so the input may end
    without a newline (its last record then has none)."""
    rng = random.Random(seed)
    pool = rng.randbytes(_POOL_BYTES).translate(_TO_TEXT)
    long_len = min(long_bytes, size // 8)
    longs = sorted(rng.randrange(size) for _ in range(long_lines)) if long_len else []
    pieces: list[bytes] = []
    bounds: list[int] = []
    total = 0
    while total < size:
        bounds.append(total)
        if longs and total >= longs[0]:
            longs.pop(0)
            n = long_len
        else:
            r = rng.random()
            n = 0 if r < 0.1 else int(r * r * 400)
        at = rng.randrange(_POOL_BYTES - n) if n < _POOL_BYTES else 0
        text = pool[at : at + n] if n <= _POOL_BYTES else pool * (n // _POOL_BYTES + 1)
        pieces.append(text[:n])
        pieces.append(b"\r\n" if rng.random() < 0.5 else b"\n")
        total += n + len(pieces[-1])
    data = b"".join(pieces)[:size]
    bounds.append(size)
    return data, bounds


def _fake_rio_headers(rng: random.Random) -> bytes:
    """A pool of payload bytes holding, at every 4-aligned offset a few words apart, the
    magic and a header: mostly cflag 0 or 1 with a short length (a record's start, as far
    as a look at those 8 bytes can tell), some cflag 2 or 3, some lengths of 2^28 bytes
    that fit in no test object; plus unaligned magic words."""
    pool = bytearray(rng.randbytes(_POOL_BYTES))
    i = 0
    while i < _POOL_BYTES - 16:
        r = rng.random()
        cflag = 0 if r < 0.45 else 1 if r < 0.85 else rng.choice((2, 3))
        length = rng.randrange(300) if rng.random() < 0.9 else 1 << 28
        pool[i : i + 8] = struct.pack("<II", MAGIC, (cflag << 29) | length)
        if rng.random() < 0.2:  # an unaligned magic too
            j = i + 8 + rng.choice((1, 2, 3))
            pool[j : j + 4] = MAGIC_BYTES
        i += 4 * rng.randrange(3, 24)
    return bytes(pool)


def recordio_stream(size: int, seed: int = 0, *, hidden: float = 0.9) -> tuple[bytes, list[int]]:
    """About ``size`` bytes of RecordIO (ends after the record that reaches ``size``) whose
    payloads hold the magic, 4-aligned, with valid-looking record-starting headers, as the
    SageMaker SDK writes them (no escaping): a share ``hidden`` of the payloads (and parts)
    hold such fakes every few words, the rest none. Records of 0-1,500 bytes, one in 50 of
    up to 40 KiB; one in 10 is multi-part (cflag 1, 2..., 3)."""
    rng = random.Random(seed)
    pool = _fake_rio_headers(rng)
    clean = bytearray(rng.randbytes(_POOL_BYTES))
    at = clean.find(MAGIC_BYTES)
    while at >= 0:  # no magic word at all, aligned or not
        clean[at] ^= 0xFF
        at = clean.find(MAGIC_BYTES, at)
    pieces: list[bytes] = []
    bounds: list[int] = []
    total = 0

    def payload() -> bytes:
        r = rng.random()
        n = rng.randrange(40 * 1024) if r < 0.02 else int(r * r * 1500)
        at = 4 * rng.randrange((_POOL_BYTES - n) // 4)
        return (pool if rng.random() < hidden else clean)[at : at + n]

    while total < size:
        bounds.append(total)
        if rng.random() < 0.1:
            parts = [payload() for _ in range(rng.randrange(2, 5))]
            flags = [1] + [2] * (len(parts) - 2) + [3]
            record = b"".join(rio_frame(p, f) for p, f in zip(parts, flags, strict=True))
        else:
            record = rio_frame(payload())
        pieces.append(record)
        total += len(record)
    bounds.append(total)
    return b"".join(pieces), bounds


def _nested_tf_frames(rng: random.Random) -> bytes:
    """A pool of whole valid TFRecord frames (payloads of 0-200 bytes) with 0-7 bytes of
    noise between them: any slice of it holds whole valid frames."""
    noise = rng.randbytes(_POOL_BYTES)
    pieces, total = [], 0
    while total < _POOL_BYTES:
        gap = rng.randrange(8)
        at = rng.randrange(_POOL_BYTES - 256)
        frame = tf_frame(noise[at : at + rng.randrange(201)])
        pieces += [noise[at : at + gap], frame]
        total += gap + len(frame)
    return b"".join(pieces)


def tfrecord_stream(size: int, seed: int = 0, *, hidden: float = 0.9) -> tuple[bytes, list[int]]:
    """About ``size`` bytes of TFRecord (ends after the record that reaches ``size``) whose
    payloads hold whole valid TFRecord frames: a share ``hidden`` of them (one in nine of
    those exactly one valid frame, the rest slices of a pool of frames with noise between),
    the others plain noise. Payloads of 0-1,500 bytes, one in 50 up to 40 KiB."""
    rng = random.Random(seed)
    pool = _nested_tf_frames(rng)
    pieces: list[bytes] = []
    bounds: list[int] = []
    total = 0
    while total < size:
        bounds.append(total)
        r = rng.random()
        n = rng.randrange(40 * 1024) if r < 0.02 else int(r * r * 1500)
        at = rng.randrange(_POOL_BYTES - n)
        kind = rng.random()
        if kind >= hidden:
            body = rng.randbytes(n)
        elif kind < hidden / 9:
            body = tf_frame(pool[at : at + n % 200])
        else:
            body = pool[at : at + n]
        record = tf_frame(body)
        pieces.append(record)
        total += len(record)
    bounds.append(total)
    return b"".join(pieces), bounds
