# Line and None splitting; included by _splitters_c.pyx.
#
#   Line:  a record is the bytes up to and including \n; a final segment without \n is a
#          record if non-empty; \r stays in its record; an empty line is a record.
#
#          MultiRecord, bound B: once more than B bytes are held from the body start S,
#          the body ends after the last \n in [S, S + B): one memrchr from the bound back,
#          one copy of the body, one vectorised count of its newlines. No per-record work.
#          With a cap of N records (Agent.MaxRecordsPerRequest) the body ends after the
#          N-th \n from S instead, when that comes before the bound: counted a block at a
#          time (bt_nth_byte) and only once, the count carried over between chunks.
#          A splitter made with ``bounds`` records each body's line ends instead of
#          counting them: one memchr loop over the body once it is cut (_with_ends).
#
#            S                                    S + B
#            |r e c \n r e c o r d \n r e c \n r e c|o r d \n ...
#                                         ^ last \n in the window: the body ends here
#
#   None:  the whole object is one record.


@cython.final
cdef class _Whole(_Splitter):
    cdef bint skipping  # over the bound: counting on to learn the object's size

    cdef int64_t _scan(self) except -1:
        if self.bound == 0:
            self.out.append(_body(self.w.view(), 0, self.w.pos, 0, self.w.cstart == 0, False))
            return self.w.pos
        if self.skipping or self.w.pos > self.bound:
            self.skipping = True
            return self.w.pos
        return 0

    cdef int _end(self) except -1:
        if self.skipping:
            raise err.too_large(0, self.w.pos, self.bound, "object")
        if self.bound == 0:
            if self.w.pos:
                self.out.append(_body(EMPTY_VIEW, 0, self.w.pos, 1, False, True))
        elif self.w.pos:
            self.out.append(_body(self.w.take(0, self.w.pos), 0, self.w.pos, 1, True, True))
        return 0


@cython.final
cdef class _Lines(_Splitter):
    cdef int64_t S  # start of the body (MultiRecord) or record (SingleRecord) in progress
    cdef bint skipping  # that record is over the bound; looking for its end
    cdef bint open_  # streamed: a part of the body (record) in progress has gone out
    cdef int64_t newlines  # streamed MultiRecord: records ended so far
    cdef int lastbyte  # ... and the last byte seen
    cdef int64_t scan_at  # capped MultiRecord: the newlines in [S, scan_at) are counted ...
    cdef int64_t seen  # ... and this is how many (always fewer than the cap)

    def __cinit__(self, *args):
        self.lastbyte = 10

    cdef int64_t _scan(self) except -1:
        cdef const unsigned char *q
        if self.skipping:
            q = <const unsigned char *>memchr(self.w.cptr, 10, self.w.clen)
            if q != NULL:
                raise err.too_large(
                    self.S, self.w.cstart + (q - self.w.cptr) + 1 - self.S, self.bound, "record"
                )
            return self.w.pos
        if self.bound == 0:
            if self.single:
                self._stream_records()
            elif self.cap:
                self._stream_capped()
            else:
                self.newlines += bt_count_byte(self.w.cptr, self.w.clen, 10)
                self.lastbyte = self.w.cptr[self.w.clen - 1]
                self.out.append(
                    _body(self.w.view(), 0, self.w.pos, self.newlines, self.w.cstart == 0, False)
                )
            return self.w.pos
        if self.single:
            self._records()
        elif self.cap:
            self._capped_bodies()
        else:
            self._bodies()
        return self.w.pos if self.skipping else self.S

    cdef int _bodies(self) except -1:
        """MultiRecord: while more than a bound is held, cut at the last newline in it."""
        cdef int64_t S = self.S, B = self.bound, pos = self.w.pos, q
        cdef list out = self.out
        while pos - S > B:
            q = self.w.rfind(S, S + B, 10)
            if q < 0:
                q = self.w.find(S + B, pos, 10)
                if q >= 0:
                    raise err.too_large(S, q + 1 - S, B, "record")
                self.skipping = True
                break
            if self.ends is None:
                out.append(_body(self.w.take(S, q + 1 - S), S, q + 1,
                                 self.w.count_byte(S, q + 1, 10), True, True))
            else:
                out.append(self._with_ends(S, q + 1))
            S = q + 1
        self.S = S
        return 0

    cdef Body _with_ends(self, int64_t S, int64_t e):
        """The whole MultiRecord body [S, e) with its record ends (Body.bounds): one memchr
        loop over the body, which also counts its records. Only for a splitter made with
        ``bounds``; the others keep the memrchr-and-count path above."""
        cdef object data = self.w.take(S, e - S)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef const unsigned char *q
        cdef Py_ssize_t n = e - S, i = 0, records
        cdef _Ends ends = self.ends
        while True:
            q = <const unsigned char *>memchr(p + i, 10, n - i)
            if q == NULL:
                break
            i = q - p + 1
            ends.add(<uint32_t>i)
        if i < n:  # the final line, without a newline
            ends.add(<uint32_t>n)
        records = ends.n
        return _bbody(data, S, e, records, ends.take())

    cdef int _capped_bodies(self) except -1:
        """MultiRecord with a cap: a body ends after the cap-th newline from its start,
        or, when the bound comes first, where ``_bodies`` would end it."""
        cdef int64_t S = self.S, B = self.bound, N = self.cap, pos = self.w.pos, q, lim
        cdef int64_t found = 0
        cdef list out = self.out
        while True:
            lim = pos if pos < S + B else S + B
            q = self.w.nth(self.scan_at, lim, 10, N - self.seen, &found)
            if q >= 0:
                if self.ends is None:
                    out.append(_body(self.w.take(S, q + 1 - S), S, q + 1, N, True, True))
                else:
                    out.append(self._with_ends(S, q + 1))
                S = q + 1
                self.scan_at = S
                self.seen = 0
                continue
            self.seen += found
            self.scan_at = lim
            if pos - S <= B:
                break
            q = self.w.rfind(S, S + B, 10)
            if q < 0:
                q = self.w.find(S + B, pos, 10)
                if q >= 0:
                    raise err.too_large(S, q + 1 - S, B, "record")
                self.skipping = True
                break
            if self.ends is None:
                out.append(_body(self.w.take(S, q + 1 - S), S, q + 1, self.seen, True, True))
            else:
                out.append(self._with_ends(S, q + 1))
            S = q + 1
            self.scan_at = S
            self.seen = 0
        self.S = S
        return 0

    cdef int _stream_capped(self) except -1:
        """MultiRecord, unbounded, with a cap: a body's parts as they arrive; it closes
        after its cap-th newline and the next body opens on the byte after."""
        cdef const unsigned char *p = self.w.cptr
        cdef const unsigned char *q
        cdef Py_ssize_t n = self.w.clen, i = 0, j
        cdef int64_t cs = self.w.cstart
        cdef size_t found = 0
        cdef object view = self.w.view()
        while i < n:
            q = bt_nth_byte(p + i, n - i, 10, self.cap - self.seen, &found)
            if q == NULL:
                self.seen += found
                self.out.append(_body(view[i:], self.S, cs + n, self.seen, not self.open_, False))
                self.open_ = True
                break
            j = q - p + 1
            self.out.append(_body(view[i:j], self.S, cs + j, self.cap, not self.open_, True))
            self.S = cs + j
            self.seen = 0
            self.open_ = False
            i = j
        self.lastbyte = p[n - 1]
        return 0

    cdef int _records(self) except -1:
        """SingleRecord, bounded: one body per line; the hot loop is memchr and a copy."""
        cdef const unsigned char *p = self.w.cptr
        cdef const unsigned char *q
        cdef Py_ssize_t n = self.w.clen, i = 0
        cdef int64_t S = self.S, B = self.bound, cs = self.w.cstart, e
        cdef list out = self.out
        q = <const unsigned char *>memchr(p, 10, n)
        while q != NULL:
            e = cs + (q - p) + 1
            if e - S > B:
                raise err.too_large(S, e - S, B, "record")
            if S >= cs:
                data = PyBytes_FromStringAndSize(<const char *>p + i, e - S)
            else:
                data = self.w.take(S, e - S)
            out.append(_body(data, S, e, 1, True, True))
            S = e
            i = q - p + 1
            q = <const unsigned char *>memchr(p + i, 10, n - i)
        self.S = S
        self.skipping = self.w.pos - S > B
        return 0

    cdef int _stream_records(self) except -1:
        """SingleRecord, unbounded: each line's bytes go out as parts as they arrive."""
        cdef const unsigned char *p = self.w.cptr
        cdef const unsigned char *q
        cdef Py_ssize_t n = self.w.clen, i = 0, j
        cdef int64_t cs = self.w.cstart
        cdef object view = self.w.view()
        while i < n:
            q = <const unsigned char *>memchr(p + i, 10, n - i)
            if not self.open_:
                self.S = cs + i
            if q == NULL:
                self.out.append(_body(view[i:], self.S, cs + n, 0, not self.open_, False))
                self.open_ = True
                return 0
            j = q - p + 1
            self.out.append(_body(view[i:j], self.S, cs + j, 1, not self.open_, True))
            self.open_ = False
            i = j
        return 0

    cdef int _end(self) except -1:
        cdef int64_t S = self.S, pos = self.w.pos, records
        if self.skipping:
            raise err.too_large(S, pos - S, self.bound, "record")
        if self.bound == 0:
            if self.single:
                if self.open_:
                    self.out.append(_body(EMPTY_VIEW, S, pos, 1, False, True))
            elif self.cap:
                if self.open_:
                    records = self.seen + (self.lastbyte != 10)
                    self.out.append(_body(EMPTY_VIEW, S, pos, records, False, True))
            elif pos:
                records = self.newlines + (self.lastbyte != 10)
                self.out.append(_body(EMPTY_VIEW, 0, pos, records, False, True))
        elif pos > S and self.ends is not None:
            self.out.append(self._with_ends(S, pos))
        elif pos > S:
            if self.single:
                records = 1
            else:
                records = self.w.count_byte(S, pos, 10) + (self.w.byte(pos - 1) != 10)
            self.out.append(_body(self.w.take(S, pos - S), S, pos, records, True, True))
        return 0
