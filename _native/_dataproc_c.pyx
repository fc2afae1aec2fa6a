# DataProcessing's CSV rows, compiled. agent/dataproc/_dataproc_py.py is the pure-Python
# twin; agent/dataproc/csv.py defines the bytes both give back.
#
# A buffer holds rows, one per line; the \n (and a \r just before it) is not in the row.
# A row is RFC 4180 fields: a field opening with " runs to the next lone " and holds
# "" for each ", and a comma must follow it; any other field runs to the next comma.
#
#   data    i d - 7 , " S m i t h ,   J " , " s a y   " " h i " " " , 0 . 5 \r \n
#           <plain>   <quoted: holds a , >   <quoted: holds "" pairs> <plain>  (dropped)
#
#   fields  each is (pointer, length, quoted, special) into the buffer, never copied:
#           special = the field's text holds a , " or \r, so it is written quoted.
#
# Writing a field with minimal quoting then needs no unescaping: a quoted field that is
# special is already in its minimal form (copy it with its quotes), one that is not loses
# its quotes; a plain field that is special (a stray " or a \r) gets quoted, " doubled.
# A row of one empty field is written "", so it is not read back as a row of none.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy

from agent.dataproc.csv import RowError, after_quote, unclosed_quote
from agent.job.jsonpath import PathMiss


cdef enum:
    LF = 10
    CR = 13
    QUOTE = 34
    COMMA = 44


def implementation():
    """``"native"`` for this twin."""
    return "native"


cdef struct Field:
    const unsigned char *p
    Py_ssize_t n
    bint quoted  # p..p+n includes the quotes
    bint special  # the text holds a , " or \r: written quoted


@cython.final
cdef class _Out:
    """A growing output buffer, turned into bytes once."""

    cdef unsigned char *buf
    cdef Py_ssize_t size, cap

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t want = self.size + extra
        cdef unsigned char *grown
        if want <= self.cap:
            return 0
        want = max(want, 2 * self.cap, 4096)
        grown = <unsigned char *>PyMem_Realloc(self.buf, want)
        if grown == NULL:
            raise MemoryError()
        self.buf, self.cap = grown, want
        return 0

    cdef inline int put(self, const unsigned char *p, Py_ssize_t n) except -1:
        self.reserve(n)
        memcpy(self.buf + self.size, p, n)
        self.size += n
        return 0

    cdef inline int byte(self, unsigned char c) except -1:
        self.reserve(1)
        self.buf[self.size] = c
        self.size += 1
        return 0

    cdef bytes take(self):
        return PyBytes_FromStringAndSize(<char *>self.buf, self.size)


@cython.final
cdef class _Row:
    """The fields of the row being handled, and the columns picked for its width."""

    cdef Field *f
    cdef Py_ssize_t n, cap
    cdef object picker
    cdef Py_ssize_t width  # the width ``cols`` was resolved for; -1: none yet
    cdef Py_ssize_t *cols
    cdef Py_ssize_t ncols

    def __cinit__(self, picker):
        self.picker = picker
        self.width = -1

    def __dealloc__(self):
        PyMem_Free(self.f)
        PyMem_Free(self.cols)

    cdef int add(self, const unsigned char *p, Py_ssize_t n, bint quoted, bint special) except -1:
        cdef Field *grown
        if self.n == self.cap:
            grown = <Field *>PyMem_Realloc(self.f, max(16, 2 * self.cap) * sizeof(Field))
            if grown == NULL:
                raise MemoryError()
            self.f = grown
            self.cap = max(16, 2 * self.cap)
        self.f[self.n].p = p
        self.f[self.n].n = n
        self.f[self.n].quoted = quoted
        self.f[self.n].special = special
        self.n += 1
        return 0

    cdef int parse(self, const unsigned char *p, Py_ssize_t n) except -1:
        """Append the fields of the row ``p[0:n]``; an empty row has none."""
        cdef Py_ssize_t i = 0, j, k, opened
        cdef const unsigned char *c
        cdef bint special
        if n == 0:
            return 0
        if memchr(p, QUOTE, n) == NULL and memchr(p, CR, n) == NULL:
            while True:  # the usual row: plain fields, none special
                c = <const unsigned char *>memchr(p + i, COMMA, n - i)
                k = n if c == NULL else c - p
                self.add(p + i, k - i, False, False)
                if c == NULL:
                    return 0
                i = k + 1
        while True:
            if i < n and p[i] == QUOTE:
                opened = i
                j = i + 1
                special = False
                while True:
                    c = <const unsigned char *>memchr(p + j, QUOTE, n - j)
                    if c == NULL:
                        raise unclosed_quote(opened)
                    k = c - p
                    if k + 1 < n and p[k + 1] == QUOTE:
                        special = True
                        j = k + 2
                        continue
                    break
                if not special:
                    special = (memchr(p + i + 1, COMMA, k - i - 1) != NULL
                               or memchr(p + i + 1, CR, k - i - 1) != NULL)
                self.add(p + i, k + 1 - i, True, special)
                i = k + 1
                if i == n:
                    return 0
                if p[i] != COMMA:
                    raise after_quote(opened, p[i], i)
                i += 1
            else:
                c = <const unsigned char *>memchr(p + i, COMMA, n - i)
                k = n if c == NULL else c - p
                special = (memchr(p + i, QUOTE, k - i) != NULL
                           or memchr(p + i, CR, k - i) != NULL)
                self.add(p + i, k - i, False, special)
                if c == NULL:
                    return 0
                i = k + 1

    cdef int resolve(self, Py_ssize_t row) except -1:
        """Columns for this row's width: asked of the picker when the width changes."""
        cdef Py_ssize_t *grown
        cdef Py_ssize_t m, k
        if self.n == self.width:
            return 0
        try:
            picked = self.picker.columns(self.n)
        except PathMiss as miss:
            raise RowError(row, miss) from None
        m = len(picked)
        grown = <Py_ssize_t *>PyMem_Realloc(self.cols, max(m, 1) * sizeof(Py_ssize_t))
        if grown == NULL:
            raise MemoryError()
        self.cols = grown
        for k in range(m):
            self.cols[k] = picked[k]
        self.ncols = m
        self.width = self.n
        return 0

    cdef int write(self, _Out out) except -1:
        """The picked fields, minimally quoted, and the \n ending the line."""
        cdef Py_ssize_t k
        cdef Field *f
        if self.ncols == 1:
            f = &self.f[self.cols[0]]
            if f.n == 0 or (f.quoted and f.n == 2):
                out.byte(QUOTE)
                out.byte(QUOTE)  # one empty field
            else:
                _field(out, f)
        else:
            for k in range(self.ncols):
                if k:
                    out.byte(COMMA)
                _field(out, &self.f[self.cols[k]])
        out.byte(LF)
        return 0


cdef inline int _field(_Out out, Field *f) except -1:
    cdef Py_ssize_t i, start
    if not f.special:
        if f.quoted:
            out.put(f.p + 1, f.n - 2)
        else:
            out.put(f.p, f.n)
        return 0
    if f.quoted:
        out.put(f.p, f.n)  # already minimal: quotes around, every " doubled
        return 0
    out.byte(QUOTE)
    start = 0
    for i in range(f.n):
        if f.p[i] == QUOTE:
            out.put(f.p + start, i + 1 - start)
            out.byte(QUOTE)
            start = i + 1
    out.put(f.p + start, f.n - start)
    out.byte(QUOTE)
    return 0


cdef inline Py_ssize_t _line_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n):
    """Where the line starting at ``pos`` ends (its \n, or ``n``)."""
    cdef const unsigned char *c = <const unsigned char *>memchr(p + pos, LF, n - pos)
    return n if c == NULL else c - p


cdef inline Py_ssize_t _content(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end):
    """The row's length: the line without a \r just before its \n."""
    if end > pos and p[end - 1] == CR:
        return end - 1 - pos
    return end - pos


def pick_rows(bytes data not None, picker):
    """The picked columns of every row of ``data``, one line each: ``(out, sent, read)``.

    Row ``k`` starts at ``sent[k]`` in ``out`` and at ``read[k]`` in ``data``; both lists
    end with the total length. ``RowError`` names the first row that does not fit.
    """
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0, end, row = 0
    cdef _Out out = _Out()
    cdef _Row fields = _Row(picker)
    sent, read = [0], [0]
    out.reserve(n + n // 8)
    while pos < n:
        end = _line_end(p, pos, n)
        fields.n = 0
        try:
            fields.parse(p + pos, _content(p, pos, end))
        except ValueError as error:
            raise RowError(row, error) from None
        fields.resolve(row)
        fields.write(out)
        pos = end + 1 if end < n else n
        row += 1
        sent.append(out.size)
        read.append(pos)
    return out.take(), sent, read


def join_pick(bytes left not None, bytes right not None, picker):
    """Row ``k`` of ``left`` joined with row ``k`` of ``right`` (its fields appended), then
    the picked columns, one line each; without a picker the rows' bytes are kept as they
    are. Both buffers must hold the same number of rows (``ValueError`` otherwise)."""
    cdef const unsigned char *a = <const unsigned char *>PyBytes_AS_STRING(left)
    cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(right)
    cdef Py_ssize_t na = PyBytes_GET_SIZE(left), nb = PyBytes_GET_SIZE(right)
    cdef Py_ssize_t pa = 0, pb = 0, ea, eb, la, lb, row = 0
    cdef _Out out = _Out()
    cdef _Row fields = _Row(picker) if picker is not None else None
    out.reserve(na + nb + na // 8)
    while pa < na and pb < nb:
        ea, eb = _line_end(a, pa, na), _line_end(b, pb, nb)
        la, lb = _content(a, pa, ea), _content(b, pb, eb)
        if fields is None:
            out.put(a + pa, la)
            if la and lb:
                out.byte(COMMA)
            out.put(b + pb, lb)
            out.byte(LF)
        else:
            fields.n = 0
            try:
                fields.parse(a + pa, la)
            except ValueError as error:
                raise RowError(row, error) from None
            try:
                fields.parse(b + pb, lb)
            except ValueError as error:
                raise RowError(row, error, True) from None
            fields.resolve(row)
            fields.write(out)
        pa = ea + 1 if ea < na else na
        pb = eb + 1 if eb < nb else nb
        row += 1
    if pa < na or pb < nb:
        raise ValueError("the two buffers hold different numbers of rows")
    return out.take()
