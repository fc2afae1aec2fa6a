# RecordIO and TFRecord splitting; included by _splitters_c.pyx.
#
#   RecordIO frame (8-byte header)         TFRecord frame (12-byte header, 4-byte trailer)
#   0      4      8           8+len  +pad  0          8        12          12+len   16+len
#   |magic |lrec  |payload ...|0-pad|       |len u64   |mcrc(len)|payload ...|mcrc(payload)|
#
# One state machine walks frames through chunks of any size:
#
#   HEADER --(whole: validate; size known; batch decision)--> PAYLOAD --(counted down;
#   TFRecord CRC runs over it)--> TAIL (TFRecord CRC / RecordIO padding) --> frame end
#
# A header split across chunks is gathered in `hdr`; nothing else is ever gathered: the
# payload of a frame that claims 2^60 bytes is only counted, so no input allocates more
# than the bound. MultiRecord bodies are cut at the header of the first record that does
# not fit, so held bytes never exceed the bound, or at the end of the record that
# reaches the cap (Agent.MaxRecordsPerRequest), whichever comes first. A splitter made
# with ``bounds`` notes each record's end as its last frame ends (`ends`, Body.bounds).

cdef enum:
    HEADER = 0
    PAYLOAD = 1
    TAIL = 2
    PREFETCH_AHEAD = 8192  # RecordIO: keep this much of the chunk on its way into cache

cdef uint32_t MAGIC = 0xCED7230A
cdef uint32_t LEN_MASK = (1 << 29) - 1
cdef object MAGIC_VIEW = memoryview(b"\x0a\x23\xd7\xce")


cdef inline uint32_t _u32(const unsigned char *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _u64(const unsigned char *p) noexcept nogil:
    return _u32(p) | (<uint64_t>_u32(p + 4) << 32)


@cython.final
cdef class _Frames(_Splitter):
    cdef bint tf
    cdef str fmt
    cdef Py_ssize_t hsize
    cdef int phase
    cdef unsigned char hdr[16]
    cdef Py_ssize_t hfill
    cdef unsigned char trl[4]
    cdef Py_ssize_t tfill
    cdef int64_t fstart  # where the frame being walked starts
    cdef uint64_t plen  # its payload length
    cdef uint64_t left  # bytes of the current phase still to come
    cdef uint32_t crc
    cdef int64_t open_  # RecordIO: start of an open multi-part record, or -1
    cdef bint completes  # the frame ends its record
    cdef int64_t rstart  # start of the record the frame belongs to
    cdef uint64_t rsize  # SingleRecord: payload bytes so far, joiners included
    cdef bint skipping  # over the bound: walking on only to learn the record's size
    cdef int64_t *segs  # SingleRecord: (start, length) of each payload part
    cdef Py_ssize_t nsegs, segcap
    cdef int64_t S, R, k  # MultiRecord: body start, end of its last record, its count
    cdef int64_t records  # streamed MultiRecord: records of the body completed so far
    cdef bint streamed_single, sent, pfirst  # sent: a part of the body has gone out
    cdef Py_ssize_t pi  # streamed MultiRecord with a cap: where in the chunk the next part starts
    cdef Py_ssize_t pa, pb  # streamed SingleRecord: chunk range of the next part's data

    def __cinit__(self, int64_t bound, bint single, int64_t cap, bint tf):
        self.tf = tf
        self.fmt = "TFRecord" if tf else "RecordIO"
        self.hsize = 12 if tf else 8
        self.open_ = -1
        self.pa = self.pb = -1
        self.streamed_single = single and bound == 0

    def __dealloc__(self):
        PyMem_Free(self.segs)

    cdef inline uint64_t _tailsize(self) noexcept:
        return 4 if self.tf else (-self.plen) & 3

    cdef object _fsize(self):
        return self.hsize + <object>self.plen + <object>self._tailsize()

    cdef int64_t _scan(self) except -1:
        cdef const unsigned char *p = self.w.cptr
        cdef Py_ssize_t n = self.w.clen, i = 0, hsize = self.hsize, take, ahead = 0, target
        cdef int64_t cs = self.w.cstart
        while i < n:
            if self.phase == HEADER:
                if self.hfill == 0 and n - i >= hsize:
                    self.fstart = cs + i
                    i += hsize
                    self._on_header(p + i - hsize)
                    if not self.tf:
                        # RecordIO hops from header to header, one cache line per frame at
                        # irregular strides the hardware prefetcher cannot follow; stream
                        # the chunk in ahead of the walk instead. (TFRecord's CRC reads
                        # every byte in order, which the hardware prefetches by itself.)
                        target = i + PREFETCH_AHEAD if n - i > PREFETCH_AHEAD else n
                        while ahead < target:
                            bt_prefetch(p + ahead)
                            ahead += 64
                    continue
                if self.hfill == 0:
                    self.fstart = cs + i
                take = hsize - self.hfill
                if take > n - i:
                    take = n - i
                memcpy(self.hdr + self.hfill, p + i, take)
                self.hfill += take
                i += take
                if self.hfill == hsize:
                    self.hfill = 0
                    self._on_header(self.hdr)
            elif self.phase == PAYLOAD:
                take = n - i
                if self.left < <uint64_t>take:
                    take = <Py_ssize_t>self.left
                if self.tf:
                    self.crc = bt_crc32c_update(self.crc, p + i, take)
                if self.streamed_single:
                    if self.pa < 0:
                        self.pa = i
                    self.pb = i + take
                i += take
                self.left -= take
                if self.left == 0:
                    self._tail()
            else:
                take = n - i
                if self.left < <uint64_t>take:
                    take = <Py_ssize_t>self.left
                if self.tf:
                    memcpy(self.trl + self.tfill, p + i, take)
                    self.tfill += take
                i += take
                self.left -= take
                if self.left == 0:
                    self._frame_end()
        return self._after_chunk()

    cdef int _on_header(self, const unsigned char *h) except -1:
        cdef uint32_t stored, computed, lrec, cflag
        cdef int64_t fstart = self.fstart
        cdef bint starts
        if self.tf:
            stored = _u32(h + 8)
            computed = bt_crc32c_mask(bt_crc32c_update(0, h, 8))
            if stored != computed:
                raise err.bad_length_crc(fstart, stored, computed)
            self.plen = _u64(h)
            starts = self.completes = True
        else:
            if _u32(h) != MAGIC:
                raise err.bad_magic(fstart, _u32(h))
            lrec = _u32(h + 4)
            cflag = lrec >> 29
            if cflag > 3:
                raise err.bad_cflag(fstart, cflag)
            if cflag <= 1:
                if self.open_ >= 0:
                    raise err.unclosed_before(fstart, cflag, self.open_)
                if cflag == 1:
                    self.open_ = fstart
            else:
                if self.open_ < 0:
                    raise err.orphan_part(fstart, cflag)
                if cflag == 3:
                    self.open_ = -1
            self.plen = lrec & LEN_MASK
            starts = cflag <= 1
            self.completes = cflag == 0 or cflag == 3
        if starts:
            self.rstart = fstart
            self.rsize = self.plen
        else:
            self.rsize += 4 + self.plen
        if self.bound and not self.single:
            if not self.skipping and self._overflows():
                if self.rstart > self.S:
                    self._cut(self.rstart)
                    self.S = self.rstart
                    self.k = 0
                self.skipping = self._overflows()
            if self.skipping and self.completes:
                size = fstart - self.rstart + self._fsize()
                raise err.too_large(self.rstart, size, self.bound, "record")
        elif self.bound:
            self.skipping = self.skipping or self.rsize > <uint64_t>self.bound
            if self.skipping and self.completes:
                raise err.too_large(self.rstart, self.rsize, self.bound, "payload")
            if not self.skipping:
                self._segment(fstart + self.hsize, <int64_t>self.plen)
        elif self.single:
            if starts:
                self.pfirst = True
            else:
                self._flush(fstart + self.hsize, False)
                self.out.append(_body(MAGIC_VIEW, self.rstart, fstart + self.hsize, 0, False, False))
        self.pa = self.pb = -1
        self.phase = PAYLOAD
        self.left = self.plen
        if self.plen == 0:
            self._tail()
        return 0

    cdef bint _overflows(self):
        """Would the frame end more than a bound after the body start?"""
        if self.plen > <uint64_t>self.bound:
            return True
        return self.fstart + self.hsize + <int64_t>(self.plen + self._tailsize()) - self.S > self.bound

    cdef int _segment(self, int64_t start, int64_t length) except -1:
        cdef void *grown
        if self.nsegs == self.segcap:
            grown = PyMem_Realloc(self.segs, (self.segcap * 2 + 4) * 2 * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.segs = <int64_t *>grown
            self.segcap = self.segcap * 2 + 4
        self.segs[2 * self.nsegs] = start
        self.segs[2 * self.nsegs + 1] = length
        self.nsegs += 1
        return 0

    cdef int _tail(self) except -1:
        self.phase = TAIL
        self.left = self._tailsize()
        if self.left == 0:
            self._frame_end()
        return 0

    cdef int _frame_end(self) except -1:
        cdef int64_t fstart = self.fstart
        cdef int64_t fend = fstart + self.hsize + <int64_t>(self.plen + self._tailsize())
        cdef uint32_t stored, computed
        if self.tf:
            stored = _u32(self.trl)
            computed = bt_crc32c_mask(self.crc)
            self.tfill = 0
            self.crc = 0
            if stored != computed:
                raise err.bad_payload_crc(fstart, self.plen, stored, computed)
        self.phase = HEADER
        self.fstart = fend
        if not self.completes:
            return 0
        if self.bound and not self.single:
            self.R = fend
            self.k += 1
            if self.ends is not None:
                self.ends.add(<uint32_t>(fend - self.S))
            if self.k == self.cap:  # never true without a cap (0)
                self._cut(fend)
                self.S = fend
                self.k = 0
        elif self.bound:
            self._emit_payload(fend)
        elif self.single:
            self._flush(fend, True)
        else:
            self.records += 1
            if self.records == self.cap:
                self._close_part(fend)
        return 0

    cdef int _cut(self, int64_t end) except -1:
        """Bounded MultiRecord: the body [S, end) of the k records packed so far goes out,
        with their ends (Body.bounds) when the splitter was made with ``bounds``."""
        cdef object data = self.w.take(self.S, end - self.S)
        if self.ends is None:
            self.out.append(_body(data, self.S, end, self.k, True, True))
        else:
            self.out.append(_bbody(data, self.S, end, self.k, self.ends.take()))
        return 0

    cdef int _close_part(self, int64_t fend) except -1:
        """Streamed MultiRecord with a cap: the body's last part ends at ``fend``; the
        next body starts there."""
        cdef Py_ssize_t i = fend - self.w.cstart
        self.out.append(_body(self.w.view()[self.pi:i], self.S, fend, self.records,
                              not self.sent, True))
        self.S = fend
        self.pi = i
        self.records = 0
        self.sent = False
        return 0

    cdef int _emit_payload(self, int64_t fend) except -1:
        cdef Py_ssize_t j, total = 0
        cdef unsigned char *dst
        cdef bytes data
        if self.nsegs == 1:
            payload = self.w.take(self.segs[0], self.segs[1])
        else:
            for j in range(self.nsegs):
                total += self.segs[2 * j + 1]
            data = PyBytes_FromStringAndSize(NULL, total + 4 * (self.nsegs - 1))
            dst = <unsigned char *>PyBytes_AS_STRING(data)
            for j in range(self.nsegs):
                if j:
                    memcpy(dst, b"\x0a\x23\xd7\xce", 4)
                    dst += 4
                self.w.copy(self.segs[2 * j], self.segs[2 * j + 1], dst)
                dst += self.segs[2 * j + 1]
            payload = data
        self.nsegs = 0
        self.out.append(_body(payload, self.rstart, fend, 1, True, True))
        return 0

    cdef int _flush(self, int64_t end, bint last) except -1:
        if self.pa >= 0 or self.pfirst or last:
            data = self.w.view()[self.pa:self.pb] if self.pa >= 0 else EMPTY_VIEW
            self.out.append(_body(data, self.rstart, end, last, self.pfirst, last))
            self.pfirst = False
        self.pa = self.pb = -1
        return 0

    cdef int64_t _after_chunk(self) except -1:
        if self.bound == 0:
            if self.single:
                self._flush(self.w.pos, False)
            elif self.cap:
                if self.pi < self.w.clen:
                    self.out.append(_body(self.w.view()[self.pi:], self.S, self.w.pos,
                                          self.records, not self.sent, False))
                    self.sent = True
                self.pi = 0
            else:
                self.out.append(_body(self.w.view(), 0, self.w.pos, self.records, not self.sent, False))
                self.sent = True
            return self.w.pos
        if self.skipping:
            return self.w.pos
        if not self.single:
            return self.S
        if self.phase == HEADER and self.open_ < 0:
            return self.fstart  # between records, or in a new record's header
        return self.rstart

    cdef int _end(self) except -1:
        if self.hfill:
            raise err.truncated_header(self.fmt, self.fstart, self.hfill, self.hsize)
        if self.phase != HEADER:
            raise err.truncated_frame(self.fmt, self.fstart, self.w.pos - self.fstart,
                                      self.plen, self._fsize())
        if self.open_ >= 0:
            raise err.unclosed_at_end(self.open_)
        if self.bound and not self.single:
            if self.k:
                self._cut(self.R)
        elif self.bound == 0 and not self.single and self.sent:
            self.out.append(_body(EMPTY_VIEW, self.S, self.w.pos, self.records, False, True))
        return 0
