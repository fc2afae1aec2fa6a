# The input window: held bytes plus the chunk being fed; included by _splitters_c.pyx.
#
#   absolute offsets:  held_start            cstart                 pos
#                          |  held pieces      |  current chunk      |
#                          [ piece | piece | b ][ cptr .. cptr+clen  ]
#
# Held bytes stay where they arrived: a chunk given as `bytes` is referenced (a piece
# points into it); a tail shorter than COPY_BELOW, or any part of a mutable buffer, is
# copied into a 64 KiB block of ours that later small tails fill up. A body is assembled
# from the window with one copy (none when it is exactly one whole `bytes` chunk).

cdef enum:
    COPY_BELOW = 16384
    BLOCK = 65536


cdef struct Piece:
    PyObject *obj  # a bytes object: the caller's chunk, or a block of ours
    unsigned char *ptr
    Py_ssize_t len
    Py_ssize_t room  # writable bytes after ptr + len (blocks of ours only)


@cython.final
cdef class _Window:
    cdef Piece *pieces
    cdef Py_ssize_t head, count, cap  # live pieces: pieces[head:count]
    cdef int64_t held_start, held_len  # held_start + held_len == cstart
    cdef object cobj  # the chunk being fed
    cdef object cview  # ... as a memoryview, made when a part needs one
    cdef bint cbytes
    cdef Py_buffer cbuf  # ... its buffer, when it is not bytes
    cdef const unsigned char *cptr
    cdef Py_ssize_t clen
    cdef int64_t cstart, pos

    def __dealloc__(self):
        self.drop_all()
        PyMem_Free(self.pieces)

    cdef int open(self, object chunk) except -1:
        """Start feeding ``chunk``: [cstart, pos) becomes its bytes."""
        self.cbytes = PyBytes_CheckExact(chunk)
        if self.cbytes:
            self.cptr = <const unsigned char *>PyBytes_AS_STRING(chunk)
            self.clen = PyBytes_GET_SIZE(chunk)
        else:
            PyObject_GetBuffer(chunk, &self.cbuf, PyBUF_SIMPLE)
            self.cptr = <const unsigned char *>self.cbuf.buf
            self.clen = self.cbuf.len
        self.cobj = chunk
        self.cstart = self.pos
        self.pos += self.clen
        return 0

    cdef void close(self):
        """Done with the chunk; whatever ``keep`` did not hold is forgotten."""
        if self.cobj is not None and not self.cbytes:
            PyBuffer_Release(&self.cbuf)
        self.cobj = self.cview = None
        self.cptr = NULL
        self.clen = 0
        self.cstart = self.pos

    cdef object view(self):
        if self.cview is None:
            self.cview = memoryview(self.cobj)
        return self.cview

    cdef int keep(self, int64_t keep) except -1:
        """Hold [keep, pos) beyond this feed, and nothing before it."""
        if keep >= self.cstart:
            self.drop_all()
            self.held_start = keep
            return self.hold(keep - self.cstart, self.clen - (keep - self.cstart))
        self.drop(keep)
        return self.hold(0, self.clen)

    cdef int hold(self, Py_ssize_t off, Py_ssize_t n) except -1:
        cdef Piece *last
        cdef Py_ssize_t size
        cdef bytes block
        cdef void *grown
        if n <= 0:
            return 0
        self.held_len += n
        if self.count > self.head:
            last = &self.pieces[self.count - 1]
            if last.room >= n:
                memcpy(last.ptr + last.len, self.cptr + off, n)
                last.len += n
                last.room -= n
                return 0
        if self.count == self.cap:
            if self.head:
                memmove(self.pieces, self.pieces + self.head, (self.count - self.head) * sizeof(Piece))
                self.count -= self.head
                self.head = 0
            else:
                grown = PyMem_Realloc(self.pieces, (self.cap * 2 + 8) * sizeof(Piece))
                if grown == NULL:
                    raise MemoryError()
                self.pieces = <Piece *>grown
                self.cap = self.cap * 2 + 8
        last = &self.pieces[self.count]
        if self.cbytes and n >= COPY_BELOW:
            Py_INCREF(self.cobj)
            last.obj = <PyObject *>self.cobj
            last.ptr = <unsigned char *>self.cptr + off
            last.len = n
            last.room = 0
        else:
            size = n if n >= BLOCK else BLOCK
            block = PyBytes_FromStringAndSize(NULL, size)
            Py_INCREF(block)
            last.obj = <PyObject *>block
            last.ptr = <unsigned char *>PyBytes_AS_STRING(block)
            memcpy(last.ptr, self.cptr + off, n)
            last.len = n
            last.room = size - n
        self.count += 1
        return 0

    cdef void drop(self, int64_t upto):
        """Forget held bytes before absolute position ``upto`` (at most ``cstart``)."""
        cdef int64_t k = upto - self.held_start
        cdef Piece *p
        if k <= 0:
            return
        self.held_start = upto
        self.held_len -= k
        while k > 0:
            p = &self.pieces[self.head]
            if p.len <= k:
                k -= p.len
                Py_XDECREF(p.obj)
                self.head += 1
            else:
                p.ptr += k
                p.len -= k
                k = 0
        if self.head == self.count:
            self.head = self.count = 0

    cdef void drop_all(self):
        while self.head < self.count:
            Py_XDECREF(self.pieces[self.head].obj)
            self.head += 1
        self.head = self.count = 0
        self.held_start += self.held_len
        self.held_len = 0

    cdef void copy(self, int64_t start, Py_ssize_t n, unsigned char *dst):
        """Copy input bytes [start, start + n), held or in the chunk, to dst."""
        cdef Py_ssize_t i = self.head, k, skip
        cdef Piece *p
        if start < self.cstart:
            skip = start - self.held_start
            while n > 0 and i < self.count:
                p = &self.pieces[i]
                i += 1
                if skip >= p.len:
                    skip -= p.len
                    continue
                k = p.len - skip
                if k > n:
                    k = n
                memcpy(dst, p.ptr + skip, k)
                dst += k
                n -= k
                skip = 0
            start = self.cstart
        if n > 0:
            memcpy(dst, self.cptr + (start - self.cstart), n)

    cdef object take(self, int64_t start, Py_ssize_t n):
        """Input bytes [start, start + n) as bytes: one copy, or none for a whole chunk."""
        cdef Piece *p
        cdef bytes data
        if start >= self.cstart:
            if n == self.clen and self.cbytes:
                return self.cobj
            return PyBytes_FromStringAndSize(<char *>self.cptr + (start - self.cstart), n)
        if start == self.held_start and n == self.held_len and self.count - self.head == 1:
            p = &self.pieces[self.head]
            if (p.room == 0 and p.len == PyBytes_GET_SIZE(<object>p.obj)
                    and p.ptr == <unsigned char *>PyBytes_AS_STRING(<object>p.obj)):
                return <object>p.obj
        data = PyBytes_FromStringAndSize(NULL, n)
        self.copy(start, n, <unsigned char *>PyBytes_AS_STRING(data))
        return data

    cdef int64_t rfind(self, int64_t lo, int64_t hi, unsigned char c):
        """Last position of c in [lo, hi), or -1."""
        cdef const unsigned char *q
        cdef int64_t a, b, pend, pstart
        cdef Py_ssize_t i = self.count - 1
        cdef Piece *p
        if hi > self.cstart:
            a = lo if lo > self.cstart else self.cstart
            q = <const unsigned char *>bt_memrchr(self.cptr + (a - self.cstart), c, hi - a)
            if q != NULL:
                return self.cstart + (q - self.cptr)
        pend = self.cstart
        while lo < pend and i >= self.head:
            p = &self.pieces[i]
            pstart = pend - p.len
            a = lo if lo > pstart else pstart
            b = hi if hi < pend else pend
            if b > a:
                q = <const unsigned char *>bt_memrchr(p.ptr + (a - pstart), c, b - a)
                if q != NULL:
                    return pstart + (q - p.ptr)
            pend = pstart
            i -= 1
        return -1

    cdef int64_t find(self, int64_t lo, int64_t hi, unsigned char c):
        """First position of c in [lo, hi), or -1."""
        cdef const unsigned char *q
        cdef int64_t a, b, pstart = self.held_start, pend
        cdef Py_ssize_t i = self.head
        cdef Piece *p
        while i < self.count and pstart < hi:
            p = &self.pieces[i]
            pend = pstart + p.len
            a = lo if lo > pstart else pstart
            b = hi if hi < pend else pend
            if b > a:
                q = <const unsigned char *>memchr(p.ptr + (a - pstart), c, b - a)
                if q != NULL:
                    return pstart + (q - p.ptr)
            pstart = pend
            i += 1
        if hi > self.cstart:
            a = lo if lo > self.cstart else self.cstart
            q = <const unsigned char *>memchr(self.cptr + (a - self.cstart), c, hi - a)
            if q != NULL:
                return self.cstart + (q - self.cptr)
        return -1

    cdef int64_t nth(self, int64_t lo, int64_t hi, unsigned char c, int64_t k, int64_t *found):
        """Position of the k-th (k >= 1) c in [lo, hi); or -1, and how many there are
        (fewer than k) in ``found``."""
        cdef const unsigned char *q
        cdef int64_t a, b, pstart = self.held_start, pend, seen = 0
        cdef size_t m
        cdef Py_ssize_t i = self.head
        cdef Piece *p
        while i < self.count and pstart < hi:
            p = &self.pieces[i]
            pend = pstart + p.len
            a = lo if lo > pstart else pstart
            b = hi if hi < pend else pend
            if b > a:
                q = bt_nth_byte(p.ptr + (a - pstart), b - a, c, k - seen, &m)
                if q != NULL:
                    return pstart + (q - p.ptr)
                seen += m
            pstart = pend
            i += 1
        if hi > self.cstart:
            a = lo if lo > self.cstart else self.cstart
            q = bt_nth_byte(self.cptr + (a - self.cstart), hi - a, c, k - seen, &m)
            if q != NULL:
                return self.cstart + (q - self.cptr)
            seen += m
        found[0] = seen
        return -1

    cdef int64_t count_byte(self, int64_t lo, int64_t hi, unsigned char c):
        """How many bytes in [lo, hi) equal c."""
        cdef int64_t a, b, pstart = self.held_start, pend, total = 0
        cdef Py_ssize_t i = self.head
        cdef Piece *p
        while i < self.count and pstart < hi:
            p = &self.pieces[i]
            pend = pstart + p.len
            a = lo if lo > pstart else pstart
            b = hi if hi < pend else pend
            if b > a:
                total += bt_count_byte(p.ptr + (a - pstart), b - a, c)
            pstart = pend
            i += 1
        if hi > self.cstart:
            a = lo if lo > self.cstart else self.cstart
            total += bt_count_byte(self.cptr + (a - self.cstart), hi - a, c)
        return total

    cdef int byte(self, int64_t at):
        """The input byte at ``at`` (held or in the chunk)."""
        cdef unsigned char b
        self.copy(at, 1, &b)
        return b
