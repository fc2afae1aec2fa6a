"""CRC-32C (Castagnoli) in pure Python: the twin of ``_native/_crc32c_c.pyx``.

Table-driven, one byte at a time: correct and slow. It exists so the package runs
where the extension is absent, and so tests can compare the two.
"""

from __future__ import annotations

from agent._compat import BytesLike as Buffer

_POLY = 0x82F63B78


def _table() -> tuple[int, ...]:
    rows = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        rows.append(c)
    return tuple(rows)


_TABLE = _table()


def value(data: Buffer, crc: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``crc`` (the value of the bytes before)."""
    table = _TABLE
    c = crc ^ 0xFFFFFFFF
    for b in memoryview(data).cast("B"):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """TFRecord's mask: rotate right by 15 bits and add a constant, modulo 2**32."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked(data: Buffer) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    return mask(value(data))


def implementation() -> str:
    """Always ``"python"`` for this twin."""
    return "python"
