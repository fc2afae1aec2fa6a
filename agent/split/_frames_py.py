"""RecordIO and TFRecord in pure Python: the frame walker of ``_native/_split_frames.pxi``.

One state machine walks frames through chunks of any size: HEADER (gathered in a small
scratch when it spans chunks), PAYLOAD (counted down; TFRecord's CRC runs over it),
TAIL (TFRecord's payload CRC, RecordIO's padding). Headers are validated the moment
they are whole; batching decisions are taken there too, since a header tells the frame's
size before its payload arrives. The byte formats are drawn in the .pxi file.
"""

from __future__ import annotations

import struct

from agent.codec import _crc32c_py as crc32c
from agent.split import _errors as err
from agent.split._base_py import EMPTY_VIEW, Base, Body, pack_ends

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MAGIC = err.RECORDIO_MAGIC
_MAGIC_VIEW = memoryview(_U32.pack(_MAGIC))
_LEN_MASK = (1 << 29) - 1
HEADER, PAYLOAD, TAIL = 0, 1, 2


class FrameSplitter(Base):
    fmt = ""
    hsize = 0

    def __init__(self, bound: int, single: bool, cap: int = 0) -> None:
        super().__init__(bound, single, cap)
        self._phase = HEADER
        self._hdr = bytearray()
        self._fstart = 0  # where the frame being walked starts
        self._plen = 0  # its payload length
        self._fsize = 0  # its whole size (header, payload, padding or CRC)
        self._left = 0  # bytes of the current phase still to come
        self._crc = 0
        self._trailer = bytearray()
        self._open = -1  # RecordIO: start of an open multi-part record
        self._completes = False  # the frame ends its record
        self._rstart = 0  # start of the record the frame belongs to
        self._rsize = 0  # SingleRecord: payload bytes so far, joiners included
        self._skipping = False  # over the bound: walking on only to learn its size
        self._segments: list[tuple[int, int]] = []
        self._S = 0  # MultiRecord: start of the body being packed
        self._R = 0  # ... end of its last whole record
        self._k = 0  # ... its record count
        self._records = 0  # streamed MultiRecord: records of the body completed so far
        self._sent = False  # streamed: a part (of the body in progress) has gone out
        self._pi = 0  # streamed MultiRecord with a cap: where in the chunk the next part starts
        self._pfirst = False  # streamed SingleRecord: the next part opens a body
        self._pa = -1  # ... and the chunk range of its data
        self._pb = -1
        self._streamed_single = single and bound == 0
        self._ends: list[int] = []  # with bounds: record ends of the body being packed

    def _header(self, h: bytes | bytearray, at: int) -> tuple[int, bool, bool]:
        """Validate a header at ``h[at:]``; return (payload length, starts, completes)."""
        raise NotImplementedError

    def _scan(self, cb: bytes) -> int:
        i, n, cs, hsize = 0, len(cb), self._cstart, self.hsize
        view = memoryview(cb)
        while i < n:
            if self._phase == HEADER:
                if not self._hdr and n - i >= hsize:
                    self._fstart = cs + i
                    i += hsize
                    self._on_header(cb, i - hsize)
                    continue
                if not self._hdr:
                    self._fstart = cs + i
                take = min(hsize - len(self._hdr), n - i)
                self._hdr += cb[i : i + take]
                i += take
                if len(self._hdr) == hsize:
                    h = bytes(self._hdr)
                    self._hdr.clear()
                    self._on_header(h, 0)
            elif self._phase == PAYLOAD:
                take = min(self._left, n - i)
                if self.fmt == "TFRecord":
                    self._crc = crc32c.value(view[i : i + take], self._crc)
                if self._streamed_single:
                    if self._pa < 0:
                        self._pa = i
                    self._pb = i + take
                i += take
                self._left -= take
                if self._left == 0:
                    self._tail()
            else:
                take = min(self._left, n - i)
                if self.fmt == "TFRecord":
                    self._trailer += cb[i : i + take]
                i += take
                self._left -= take
                if self._left == 0:
                    self._frame_end()
        return self._after_chunk(cs + n)

    def _on_header(self, h: bytes | bytearray, at: int) -> None:
        plen, starts, completes = self._header(h, at)
        self._plen, self._completes = plen, completes
        fstart, bound = self._fstart, self._bound
        self._fsize = self._frame_size(plen)
        if starts:
            self._rstart = fstart
            self._rsize = plen
        else:
            self._rsize += 4 + plen
        if bound and not self._single:
            fend = fstart + self._fsize
            if not self._skipping and fend - self._S > bound:
                if self._rstart > self._S:
                    self._emit(self._S, self._rstart, self._k)
                    self._S, self._k = self._rstart, 0
                self._skipping = fend - self._S > bound
            if self._skipping and completes:
                raise err.too_large(self._rstart, fend - self._rstart, bound, "record")
        elif bound:
            self._skipping = self._skipping or self._rsize > bound
            if self._skipping and completes:
                raise err.too_large(self._rstart, self._rsize, bound, "payload")
            if not self._skipping:
                self._segments.append((fstart + self.hsize, plen))
        elif self._single:
            if starts:
                self._pfirst = True
            else:
                self._flush(fstart + self.hsize, False)
                self._part(_MAGIC_VIEW, fstart + self.hsize, 0, False, False)
        self._pa = self._pb = -1
        self._phase, self._left = PAYLOAD, plen
        if plen == 0:
            self._tail()

    def _frame_size(self, plen: int) -> int:
        raise NotImplementedError

    def _tail(self) -> None:
        self._phase = TAIL
        self._left = self._fsize - self.hsize - self._plen
        if self._left == 0:
            self._frame_end()

    def _frame_end(self) -> None:
        fstart, fend = self._fstart, self._fstart + self._fsize
        if self.fmt == "TFRecord":
            stored = _U32.unpack(self._trailer)[0]
            self._trailer.clear()
            computed = crc32c.mask(self._crc)
            self._crc = 0
            if stored != computed:
                raise err.bad_payload_crc(fstart, self._plen, stored, computed)
        self._phase = HEADER
        self._fstart = fend
        if not self._completes:
            return
        if self._bound and not self._single:
            self._R = fend
            self._k += 1
            if self._bounds:
                self._ends.append(fend - self._S)
            if self._k == self._cap:  # never true without a cap (0)
                self._emit(self._S, fend, self._k)
                self._S, self._k = fend, 0
        elif self._bound:
            self._emit_payload(fend)
        elif self._single:
            self._flush(fend, True)
        else:
            self._records += 1
            if self._records == self._cap:
                self._close_part(fend)

    def _close_part(self, fend: int) -> None:
        """Streamed MultiRecord with a cap: the body's last part ends at ``fend``; the
        next body starts there."""
        i = fend - self._cstart
        data = memoryview(self._cb)[self._pi : i]
        self._out.append(Body(data, self._S, fend, self._records, not self._sent, True))
        self._S, self._pi, self._records, self._sent = fend, i, 0, False

    def _emit(self, start: int, end: int, records: int) -> None:
        """A whole MultiRecord body; with bounds, the record ends noted since the last."""
        bounds = None
        if self._bounds:
            bounds, self._ends = pack_ends(self._ends), []
        self._out.append(
            Body(self._take(start, end - start), start, end, records, True, True, bounds)
        )

    def _emit_payload(self, fend: int) -> None:
        segs = self._segments
        if len(segs) == 1:
            data = self._take(*segs[0])
        else:
            data = _MAGIC_VIEW.tobytes().join(self._take(a, n) for a, n in segs)
        self._out.append(Body(data, self._rstart, fend, 1))
        segs.clear()

    def _part(self, data: memoryview, end: int, records: int, first: bool, last: bool) -> None:
        self._out.append(Body(data, self._rstart, end, records, first, last))

    def _flush(self, end: int, last: bool) -> None:
        data = memoryview(self._cb)[self._pa : self._pb] if self._pa >= 0 else EMPTY_VIEW
        if data or self._pfirst or last:
            self._part(data, end, int(last), self._pfirst, last)
            self._pfirst = False
        self._pa = self._pb = -1

    def _after_chunk(self, pos: int) -> int:
        if self._bound == 0:
            if self._single:
                self._flush(pos, False)
            elif self._cap:
                if self._pi < len(self._cb):
                    data = memoryview(self._cb)[self._pi :]
                    self._out.append(Body(data, self._S, pos, self._records, not self._sent, False))
                    self._sent = True
                self._pi = 0
            else:
                first, self._sent = not self._sent, True
                self._out.append(Body(memoryview(self._cb), 0, pos, self._records, first, False))
            return pos
        if self._skipping:
            return pos
        if not self._single:
            return self._S
        if self._phase == HEADER and self._open < 0:
            return self._fstart  # between records, or in a new record's header
        return self._rstart

    def _end(self) -> None:
        pos = self._pos
        if self._hdr:
            raise err.truncated_header(self.fmt, self._fstart, len(self._hdr), self.hsize)
        if self._phase != HEADER:
            have = pos - self._fstart
            raise err.truncated_frame(self.fmt, self._fstart, have, self._plen, self._fsize)
        if self._open >= 0:
            raise err.unclosed_at_end(self._open)
        if self._bound and not self._single:
            if self._k:
                self._emit(self._S, self._R, self._k)
        elif self._bound == 0 and not self._single and self._sent:
            self._out.append(Body(EMPTY_VIEW, self._S, pos, self._records, False, True))


class RecordIOSplitter(FrameSplitter):
    fmt = "RecordIO"
    hsize = 8

    def _header(self, h: bytes | bytearray, at: int) -> tuple[int, bool, bool]:
        fstart = self._fstart
        magic = _U32.unpack_from(h, at)[0]
        if magic != _MAGIC:
            raise err.bad_magic(fstart, magic)
        lrec = _U32.unpack_from(h, at + 4)[0]
        cflag = lrec >> 29
        if cflag > 3:
            raise err.bad_cflag(fstart, cflag)
        if cflag <= 1:
            if self._open >= 0:
                raise err.unclosed_before(fstart, cflag, self._open)
            if cflag == 1:
                self._open = fstart
        else:
            if self._open < 0:
                raise err.orphan_part(fstart, cflag)
            if cflag == 3:
                self._open = -1
        return lrec & _LEN_MASK, cflag <= 1, cflag in (0, 3)

    def _frame_size(self, plen: int) -> int:
        return 8 + plen + (-plen & 3)


class TFRecordSplitter(FrameSplitter):
    fmt = "TFRecord"
    hsize = 12

    def _header(self, h: bytes | bytearray, at: int) -> tuple[int, bool, bool]:
        stored = _U32.unpack_from(h, at + 8)[0]
        computed = crc32c.mask(crc32c.value(memoryview(h)[at : at + 8]))
        if stored != computed:
            raise err.bad_length_crc(self._fstart, stored, computed)
        return _U64.unpack_from(h, at)[0], True, True

    def _frame_size(self, plen: int) -> int:
        return 16 + plen
