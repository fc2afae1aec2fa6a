"""The pure-Python twin of ``_native/_splitters_c.pyx``: same API, same bodies, same errors.

It favours clarity over speed but leans on ``bytes.find``/``rfind``/``count`` for Line, so
it is not slow there; its CRC-32C (TFRecord) runs a Python loop per byte. The semantics
are documented in ``agent/split/__init__.py``; the frame formats live in ``_frames_py``.
"""

from __future__ import annotations

from agent._compat import BytesLike
from agent.split import _errors as err
from agent.split._base_py import EMPTY_VIEW, Base, Body, line_ends, pack_ends
from agent.split._frames_py import RecordIOSplitter, TFRecordSplitter

__all__ = [
    "Body",
    "LineSplitter",
    "Packer",
    "RecordIOSplitter",
    "TFRecordSplitter",
    "WholeSplitter",
    "make_splitter",
    "implementation",
]

_STRATEGIES = {"MultiRecord": False, "SingleRecord": True}


def implementation() -> str:
    """``"python"`` for this twin."""
    return "python"


def make_splitter(
    split_type: str,
    batch_strategy: str,
    max_payload_bytes: int,
    max_records: int = 0,
    bounds: bool = False,
) -> Base:
    """A new splitter for one input object.

    ``split_type``: ``None``, ``Line``, ``RecordIO`` or ``TFRecord``; ``batch_strategy``:
    ``MultiRecord`` or ``SingleRecord``; ``max_payload_bytes``: the body bound in bytes,
    ``max_payload_bytes(MaxPayloadInMB)``, 0 for none (bodies stream); ``max_records``:
    at most this many records in a MultiRecord body (``Agent.MaxRecordsPerRequest``), 0
    for no cap; ``bounds``: whole MultiRecord bodies carry their record ends
    (``Body.bounds``). ValueError otherwise.
    """
    cls = _CLASSES.get(split_type)
    single = _STRATEGIES.get(batch_strategy)
    bound = max_payload_bytes
    if cls is None or single is None or type(bound) is not int or bound < 0:
        raise err.bad_arguments(split_type, batch_strategy, bound)
    if type(max_records) is not int or max_records < 0:
        raise err.bad_max_records(max_records)
    splitter = cls(bound, single, 0 if single else max_records)
    splitter._bounds = bool(bounds) and bool(bound) and not single and cls is not WholeSplitter
    return splitter


class WholeSplitter(Base):
    """SplitType None: the whole object is one record and one body (a cap changes nothing)."""

    def __init__(self, bound: int, single: bool, cap: int = 0) -> None:
        super().__init__(bound, single)
        self._skipping = False

    def _scan(self, cb: bytes) -> int:
        pos = self._pos
        if self._bound == 0:
            self._out.append(Body(memoryview(cb), 0, pos, 0, self._cstart == 0, False))
            return pos
        if self._skipping or pos > self._bound:
            self._skipping = True
            return pos
        return 0

    def _end(self) -> None:
        pos = self._pos
        if self._skipping:
            raise err.too_large(0, pos, self._bound, "object")
        if self._bound == 0:
            if pos:
                self._out.append(Body(EMPTY_VIEW, 0, pos, 1, False, True))
        elif pos:
            self._out.append(Body(self._take(0, pos), 0, pos, 1))


class LineSplitter(Base):
    """SplitType Line: records end after ``\\n``; a final unterminated segment counts."""

    def __init__(self, bound: int, single: bool, cap: int = 0) -> None:
        super().__init__(bound, single, cap)
        self._S = 0  # start of the body (MultiRecord) or record (SingleRecord) in progress
        self._skipping = False  # that record is over the bound; looking for its end
        self._open = False  # streamed: a part of the body (record) in progress has gone out
        self._newlines = 0  # streamed MultiRecord: records ended so far
        self._last = 10  # ... and the last byte seen
        self._scan_at = 0  # capped MultiRecord: newlines in [S, scan_at) are counted ...
        self._seen = 0  # ... and this is how many (always fewer than the cap)

    def _scan(self, cb: bytes) -> int:
        pos, bound = self._pos, self._bound
        if self._skipping:
            q = cb.find(b"\n")
            if q >= 0:
                S = self._S
                raise err.too_large(S, self._cstart + q + 1 - S, bound, "record")
            return pos
        if bound == 0:
            if self._single:
                self._stream_records(cb)
            elif self._cap:
                self._stream_capped(cb)
            else:
                self._newlines += cb.count(b"\n")
                self._last = cb[-1]
                first = self._cstart == 0
                self._out.append(Body(memoryview(cb), 0, pos, self._newlines, first, False))
            return pos
        if self._single:
            self._records(cb)
        elif self._cap:
            self._capped_bodies()
        else:
            self._bodies()
        if self._skipping:
            return pos
        return self._S

    def _bodies(self) -> None:
        """MultiRecord: while more than a bound is held, cut at the last newline in it."""
        S, B, pos, out = self._S, self._bound, self._pos, self._out
        while pos - S > B:
            q = self._rfind(b"\n", S, S + B)
            if q < 0:
                q = self._find(b"\n", S + B, pos)
                if q >= 0:
                    raise err.too_large(S, q + 1 - S, B, "record")
                self._skipping = True
                break
            if self._bounds:
                out.append(self._with_ends(S, q + 1))
            else:
                data = self._take(S, q + 1 - S)
                out.append(Body(data, S, q + 1, self._count(b"\n", S, q + 1)))
            S = q + 1
        self._S = S

    def _with_ends(self, S: int, e: int) -> Body:
        """The whole MultiRecord body [S, e) with its line ends (Body.bounds)."""
        data = self._take(S, e - S)
        ends = line_ends(data)
        return Body(data, S, e, len(ends), True, True, pack_ends(ends))

    def _capped_bodies(self) -> None:
        """MultiRecord with a cap: a body ends after the cap-th newline from its start,
        or, when the bound comes first, where ``_bodies`` would end it."""
        S, B, N, pos, out = self._S, self._bound, self._cap, self._pos, self._out
        while True:
            lim = min(pos, S + B)
            q, seen = self._nth(b"\n", self._scan_at, lim, N - self._seen)
            if q >= 0:
                if self._bounds:
                    out.append(self._with_ends(S, q + 1))
                else:
                    out.append(Body(self._take(S, q + 1 - S), S, q + 1, N))
                S = self._scan_at = q + 1
                self._seen = 0
                continue
            self._seen += seen
            self._scan_at = lim
            if pos - S <= B:
                break
            q = self._rfind(b"\n", S, S + B)
            if q < 0:
                q = self._find(b"\n", S + B, pos)
                if q >= 0:
                    raise err.too_large(S, q + 1 - S, B, "record")
                self._skipping = True
                break
            if self._bounds:
                out.append(self._with_ends(S, q + 1))
            else:
                out.append(Body(self._take(S, q + 1 - S), S, q + 1, self._seen))
            S = self._scan_at = q + 1
            self._seen = 0
        self._S = S

    def _stream_capped(self, cb: bytes) -> None:
        """MultiRecord, unbounded, with a cap: a body's parts as they arrive; it closes
        after its cap-th newline and the next body opens on the byte after."""
        cs, n, view, out = self._cstart, len(cb), memoryview(cb), self._out
        i = 0
        while i < n:
            q, seen = self._nth(b"\n", cs + i, cs + n, self._cap - self._seen)
            if q < 0:
                self._seen += seen
                out.append(Body(view[i:], self._S, cs + n, self._seen, not self._open, False))
                self._open = True
                break
            end = q + 1
            out.append(Body(view[i : end - cs], self._S, end, self._cap, not self._open, True))
            self._S, self._seen, self._open = end, 0, False
            i = end - cs
        self._last = cb[-1]

    def _records(self, cb: bytes) -> None:
        """SingleRecord, bounded: one body per line."""
        S, B, cs, out = self._S, self._bound, self._cstart, self._out
        i = 0
        q = cb.find(b"\n")
        while q >= 0:
            e = cs + q + 1
            if e - S > B:
                raise err.too_large(S, e - S, B, "record")
            out.append(Body(cb[i : q + 1] if S >= cs else self._take(S, e - S), S, e, 1))
            S, i = e, q + 1
            q = cb.find(b"\n", i)
        self._S = S
        self._skipping = self._pos - S > B

    def _stream_records(self, cb: bytes) -> None:
        """SingleRecord, unbounded: each line's bytes go out as parts as they arrive."""
        cs, view, out = self._cstart, memoryview(cb), self._out
        i, n = 0, len(cb)
        while i < n:
            q = cb.find(b"\n", i)
            if not self._open:
                self._S = cs + i
            if q < 0:
                out.append(Body(view[i:], self._S, cs + n, 0, not self._open, False))
                self._open = True
                return
            out.append(Body(view[i : q + 1], self._S, cs + q + 1, 1, not self._open, True))
            self._open = False
            i = q + 1

    def _end(self) -> None:
        S, pos = self._S, self._pos
        if self._skipping:
            raise err.too_large(S, pos - S, self._bound, "record")
        if self._bound == 0:
            if self._single:
                if self._open:
                    self._out.append(Body(EMPTY_VIEW, S, pos, 1, False, True))
            elif self._cap:
                if self._open:
                    records = self._seen + (self._last != 10)
                    self._out.append(Body(EMPTY_VIEW, S, pos, records, False, True))
            elif pos:
                records = self._newlines + (self._last != 10)
                self._out.append(Body(EMPTY_VIEW, 0, pos, records, False, True))
        elif pos > S and self._bounds:
            self._out.append(self._with_ends(S, pos))
        elif pos > S:
            records = (
                1 if self._single else self._count(b"\n", S, pos) + (self._byte(pos - 1) != 10)
            )
            self._out.append(Body(self._take(S, pos - S), S, pos, records))


_CLASSES: dict[str, type[Base]] = {
    "None": WholeSplitter,
    "Line": LineSplitter,
    "RecordIO": RecordIOSplitter,
    "TFRecord": TFRecordSplitter,
}


class Packer:
    """Packs records the caller already cut (filtered records) under the same bound, and
    at most ``max_records`` of them a body (0: no cap); with ``bounds``, a whole
    MultiRecord body carries its record ends in ``data`` (``Body.bounds``)."""

    def __init__(
        self,
        batch_strategy: str,
        max_payload_bytes: int,
        max_records: int = 0,
        bounds: bool = False,
    ) -> None:
        single = _STRATEGIES.get(batch_strategy)
        bound = max_payload_bytes
        if single is None or type(bound) is not int or bound < 0:
            raise err.bad_arguments("(packer)", batch_strategy, bound)
        if type(max_records) is not int or max_records < 0:
            raise err.bad_max_records(max_records)
        self._single = single
        self._bound = bound
        self._cap = max_records
        self._parts: list[bytes] = []
        self._size = 0
        self._start = 0
        self._end = 0
        self._k = 0
        # Whole MultiRecord bodies carry their record ends in ``data`` (Body.bounds).
        self._bounds = bool(bounds) and bool(bound) and not single
        self._ends: list[int] = []

    def add(self, record: BytesLike, start: int, end: int) -> Body | None:
        """Add one record whose input range is ``[start, end)``; maybe complete a body."""
        data = record if type(record) is bytes else bytes(record)
        n, bound = len(data), self._bound
        if bound and n > bound:
            raise err.too_large(start, n, bound, "filtered")
        if self._single:
            return Body(data, start, end, 1)
        if bound == 0:
            self._k += 1
            k, first = self._k, self._k == 1
            if first:
                self._start = start
            self._end = end
            last = k == self._cap  # the cap closes the streamed body
            if last:
                self._k = 0
            return Body(data, self._start, end, k, first, last)
        done = None
        if self._k and (self._size + n > bound or self._k == self._cap):
            done = self._cut()
        if not self._k:
            self._start = start
        self._parts.append(data)
        self._size += n
        self._end = end
        self._k += 1
        if self._bounds:
            self._ends.append(self._size)
        return done

    def finish(self) -> Body | None:
        """The last body, if records remain (or the closing part of a streamed body)."""
        if not self._k or self._single:
            return None
        if self._bound == 0:
            k, self._k = self._k, 0
            return Body(EMPTY_VIEW, self._start, self._end, k, False, True)
        return self._cut()

    def _cut(self) -> Body:
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        bounds = pack_ends(self._ends) if self._bounds else None
        body = Body(data, self._start, self._end, self._k, True, True, bounds)
        self._ends = []
        self._parts = []
        self._size = 0
        self._k = 0
        return body
