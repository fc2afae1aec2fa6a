"""What every pure-Python splitter shares: the Body type, held bytes, feed/finish plumbing.

A splitter sees the input as absolute byte positions ``0 .. pos``. Bytes that a later
body may still need are *held* (``[held_start, cstart)``); the chunk being fed covers
``[cstart, pos)``. Each format's ``_scan`` walks the new chunk, appends bodies to
``self._out`` and returns the first position it still needs; ``feed`` keeps exactly
``[keep, pos)`` for the next call, so memory stays within the bound plus one chunk.
"""

from __future__ import annotations

import sys
from array import array
from itertools import accumulate

from agent._compat import BytesLike
from agent.split._errors import SplitError, SplitterStateError

EMPTY_VIEW = memoryview(b"")
_U32_CODE = next(code for code in "IL" if array(code).itemsize == 4)  # a uint32
_PLUS_ONE = (1).__add__


class Body:
    """One request body, or one part of a streamed body (see ``agent.split``)."""

    __slots__ = ("data", "start", "end", "records", "first", "last", "bounds")

    def __init__(
        self,
        data: bytes | memoryview,
        start: int,
        end: int,
        records: int,
        first: bool = True,
        last: bool = True,
        bounds: bytes | None = None,
    ) -> None:
        self.data = data
        self.start = start
        self.end = end
        self.records = records
        self.first = first
        self.last = last
        self.bounds = bounds  # record ends as little-endian uint32, or None

    def __repr__(self) -> str:
        kind = "body" if self.first and self.last else "part"
        return (
            f"<{kind} [{self.start}, {self.end}) records={self.records} bytes={len(self.data)}"
            f" first={self.first} last={self.last}>"
        )


def pack_ends(ends: list[int]) -> bytes:
    """Record ends as ``Body.bounds`` holds them: little-endian uint32 values."""
    packed = array(_U32_CODE, ends)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def line_ends(data: bytes) -> list[int]:
    """The end of each line of ``data`` (the final line may lack its newline): the
    running sum of the line lengths, newlines included, without a loop in Python."""
    ends = list(accumulate(map(_PLUS_ONE, map(len, data.split(b"\n")))))
    ends.pop()  # what follows the last newline ends one past the data
    if data and data[-1] != 10:
        ends.append(len(data))
    return ends


class Base:
    """Feed/finish plumbing and held-byte bookkeeping for one input stream."""

    def __init__(self, bound: int, single: bool, cap: int = 0) -> None:
        self._bound = bound
        self._single = single
        self._cap = cap  # MultiRecord: at most this many records a body; 0: no cap
        # Whole MultiRecord bodies carry their record ends (Body.bounds); set by make_splitter.
        self._bounds = False
        self._held = bytearray()
        self._held_start = 0
        self._cb = b""  # the chunk being fed, as bytes
        self._cstart = 0
        self._pos = 0
        self._out: list[Body] = []
        self._error: SplitError | None = None
        self._finished = False

    # ------------------------------------------------------------------ public face

    def feed(self, chunk: BytesLike) -> list[Body]:
        """Bodies (or streamed parts) completed by ``chunk``, in input order."""
        self._check()
        cb = chunk if type(chunk) is bytes else bytes(chunk)
        if not cb:
            return []
        self._cb = cb
        self._cstart = self._pos
        self._pos += len(cb)
        out: list[Body] = []
        self._out = out
        try:
            self._keep(self._scan(cb))
        except SplitError as error:
            self._error = error
            raise
        finally:  # hold nothing but what _keep kept: not the chunk, not the bodies
            self._cb = b""
            self._cstart = self._pos
            self._out = []
        return out

    def finish(self) -> list[Body]:
        """The bodies the end of the input completes; raises if the input ends mid-record."""
        self._check()
        self._finished = True
        out: list[Body] = []
        self._out = out
        try:
            self._end()
        except SplitError as error:
            self._error = error
            raise
        finally:
            self._held = bytearray()
            self._out = []
        return out

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise SplitterStateError("this splitter has finished; make a new one per input")

    # ------------------------------------------------------------------ for formats

    def _scan(self, cb: bytes) -> int:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _keep(self, keep: int) -> None:
        cs = self._cstart
        if keep >= cs:
            self._held = bytearray(self._cb[keep - cs :])
        else:
            del self._held[: keep - self._held_start]
            self._held += self._cb
        self._held_start = keep

    def _take(self, start: int, n: int) -> bytes:
        """A copy of input bytes ``[start, start + n)``, held or in the current chunk."""
        cs = self._cstart
        if start >= cs:
            return self._cb[start - cs : start - cs + n]
        a = start - self._held_start
        if start + n <= cs:
            return bytes(self._held[a : a + n])
        return bytes(self._held[a:]) + self._cb[: start + n - cs]

    def _byte(self, at: int) -> int:
        cs = self._cstart
        return self._cb[at - cs] if at >= cs else self._held[at - self._held_start]

    def _find(self, byte: bytes, lo: int, hi: int) -> int:
        cs, hs = self._cstart, self._held_start
        if lo < cs:
            q = self._held.find(byte, lo - hs, min(hi, cs) - hs)
            if q >= 0:
                return q + hs
        if hi > cs:
            q = self._cb.find(byte, max(lo, cs) - cs, hi - cs)
            if q >= 0:
                return q + cs
        return -1

    def _rfind(self, byte: bytes, lo: int, hi: int) -> int:
        cs, hs = self._cstart, self._held_start
        if hi > cs:
            q = self._cb.rfind(byte, max(lo, cs) - cs, hi - cs)
            if q >= 0:
                return q + cs
        if lo < cs:
            q = self._held.rfind(byte, lo - hs, min(hi, cs) - hs)
            if q >= 0:
                return q + hs
        return -1

    def _nth(self, byte: bytes, lo: int, hi: int, k: int) -> tuple[int, int]:
        """The position of the ``k``-th ``byte`` (``k`` >= 1) in ``[lo, hi)`` and ``k``;
        or ``-1`` and how many there are, when fewer than ``k``."""
        cs, hs = self._cstart, self._held_start
        seen = 0
        for data, base, a, b in (
            (self._held, hs, lo, min(hi, cs)),
            (self._cb, cs, max(lo, cs), hi),
        ):
            if a >= b:
                continue
            n = data.count(byte, a - base, b - base)
            if seen + n < k:
                seen += n
                continue
            q = a - base - 1
            while seen < k:
                q = data.find(byte, q + 1, b - base)
                seen += 1
            return q + base, k
        return -1, seen

    def _count(self, byte: bytes, lo: int, hi: int) -> int:
        cs, hs = self._cstart, self._held_start
        n = 0
        if lo < cs:
            n += self._held.count(byte, lo - hs, min(hi, cs) - hs)
        if hi > cs:
            n += self._cb.count(byte, max(lo, cs) - cs, hi - cs)
        return n
