# Record splitters and body batching, compiled. agent/split/_splitters_py.py is the
# pure-Python twin; agent/split/__init__.py documents the API both share.
#
# The input is a byte stream cut into chunks anywhere; positions are absolute.
#
#   Line       ... r e c o r d \n | r e c \r \n | \n | l a s t           (EOF)
#                  <- record ---->  <- record ->  <-> <- record, no \n ->
#
#   RecordIO   +----------+----------+-------------------+---------+
#   (dmlc)     | magic    | lrec     | payload           | 0-pad   |  all little-endian
#              | 0a23d7ce | u32      | length bytes      | to 4    |
#              +----------+----------+-------------------+---------+
#              cflag = lrec >> 29, length = lrec & (2^29 - 1);
#              cflag 0 whole record; 1, 2..., 3 first, middle, last part, joined by the magic
#
#   TFRecord   +------------+-------------------+-----------------+-------------------+
#              | length u64 | masked crc(length)| payload         | masked crc(payload)|
#              +------------+-------------------+-----------------+-------------------+
#              crc = CRC-32C; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32)
#
#   None       the whole object is one record
#
# Layout: _split_window.pxi holds input bytes between chunks; _split_lines.pxi cuts Line
# and None; _split_frames.pxi walks RecordIO and TFRecord frames. This file has the API.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memmove

from bt_crc32c cimport bt_crc32c_mask, bt_crc32c_update

cdef extern from "bt_memrchr.h" nogil:
    const void *bt_memrchr(const void *s, int c, size_t n)
    const void *bt_memrchr_portable(const void *s, int c, size_t n)
    size_t bt_count_byte(const unsigned char *p, size_t n, unsigned char c)
    const unsigned char *bt_nth_byte(const unsigned char *p, size_t n, unsigned char c,
                                     size_t k, size_t *found)
    void bt_prefetch(const void *p)
    int BT_LIBC_MEMRCHR

from agent.split import _errors as err
from agent.split._errors import SplitError, SplitterStateError

cdef object EMPTY_VIEW = memoryview(b"")
_STRATEGIES = {"MultiRecord": False, "SingleRecord": True}


def implementation():
    """``"native"`` for this twin."""
    return "native"


def libc_memrchr():
    """True where the C library's memrchr is used, False where the portable one is."""
    return bool(BT_LIBC_MEMRCHR)


def _portable_rfind(const unsigned char[::1] data, int byte):
    """Test hook: the portable memrchr's answer, as an index or -1."""
    cdef size_t n = data.shape[0]
    cdef const unsigned char *q
    if n == 0:
        return -1
    q = <const unsigned char *>bt_memrchr_portable(&data[0], byte, n)
    return -1 if q == NULL else q - &data[0]


@cython.final
@cython.freelist(256)
cdef class Body:
    """One request body, or one part of a streamed body (see ``agent.split``)."""

    cdef readonly object data
    cdef readonly int64_t start
    cdef readonly int64_t end
    cdef readonly int64_t records
    cdef readonly bint first
    cdef readonly bint last
    cdef readonly object bounds  # record ends as little-endian uint32, or None

    def __init__(self, data, int64_t start, int64_t end, int64_t records,
                 bint first=True, bint last=True, bounds=None):
        self.data = data
        self.start = start
        self.end = end
        self.records = records
        self.first = first
        self.last = last
        self.bounds = bounds

    def __repr__(self):
        kind = "body" if self.first and self.last else "part"
        return (
            f"<{kind} [{self.start}, {self.end}) records={self.records} bytes={len(self.data)}"
            f" first={self.first} last={self.last}>"
        )


cdef inline Body _body(object data, int64_t start, int64_t end, int64_t records,
                       bint first, bint last):
    cdef Body b = Body.__new__(Body)
    b.data = data
    b.start = start
    b.end = end
    b.records = records
    b.first = first
    b.last = last
    return b


cdef inline Body _bbody(object data, int64_t start, int64_t end, int64_t records, object bounds):
    """A whole body with its record ends (``bounds``, see ``_Ends``)."""
    cdef Body b = _body(data, start, end, records, True, True)
    b.bounds = bounds
    return b


@cython.final
cdef class _Ends:
    """The record ends of the body being packed, as little-endian uint32 values relative
    to its start (Body.bounds, docs/design.md §2.4): a growable buffer, reused."""

    cdef unsigned char *buf
    cdef Py_ssize_t n, room  # entries held, entries allocated

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef inline int add(self, uint32_t v) except -1:
        cdef unsigned char *p
        if self.n == self.room:
            self._grow()
        p = self.buf + 4 * self.n
        p[0] = v & 0xFF
        p[1] = (v >> 8) & 0xFF
        p[2] = (v >> 16) & 0xFF
        p[3] = v >> 24
        self.n += 1
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t room = self.room * 2 + 1024
        cdef void *grown = PyMem_Realloc(self.buf, 4 * room)
        if grown == NULL:
            raise MemoryError()
        self.buf = <unsigned char *>grown
        self.room = room
        return 0

    cdef bytes take(self):
        """The ends added since the last take, as bytes; the buffer starts over."""
        cdef bytes data = PyBytes_FromStringAndSize(<char *>self.buf, 4 * self.n)
        self.n = 0
        return data


include "_split_window.pxi"


cdef class _Splitter:
    """Feed/finish plumbing; each format overrides _scan and _end."""

    cdef int64_t bound
    cdef bint single
    cdef int64_t cap  # MultiRecord: at most this many records a body; 0: no cap
    cdef _Ends ends  # whole MultiRecord bodies carry their record ends; None: they do not
    cdef _Window w
    cdef list out
    cdef object error
    cdef bint finished

    def __cinit__(self, int64_t bound, bint single, int64_t cap, *args):
        self.bound = bound
        self.single = single
        self.cap = cap
        self.w = _Window()

    def feed(self, chunk):
        """Bodies (or streamed parts) completed by ``chunk``, in input order."""
        cdef _Window w = self.w
        cdef list out
        self._check()
        w.open(chunk)
        try:
            if w.clen == 0:
                return []
            out = self.out = []
            try:
                w.keep(self._scan())
            except SplitError as error:
                self.error = error
                raise
            return out
        finally:
            w.close()
            self.out = None

    def finish(self):
        """The bodies the end of the input completes; raises if the input ends mid-record."""
        cdef list out
        self._check()
        self.finished = True
        out = self.out = []
        try:
            self._end()
        except SplitError as error:
            self.error = error
            raise
        finally:
            self.out = None
            self.w.drop_all()
        return out

    cdef int _check(self) except -1:
        if self.error is not None:
            raise self.error
        if self.finished:
            raise SplitterStateError("this splitter has finished; make a new one per input")
        return 0

    cdef int64_t _scan(self) except -1:
        """Walk the chunk just opened; return the first position still needed."""
        return self.w.pos

    cdef int _end(self) except -1:
        return 0


include "_split_lines.pxi"
include "_split_frames.pxi"


def make_splitter(split_type, batch_strategy, max_payload_bytes, max_records=0, bounds=False):
    """A new splitter for one input object.

    ``split_type``: ``None``, ``Line``, ``RecordIO`` or ``TFRecord``; ``batch_strategy``:
    ``MultiRecord`` or ``SingleRecord``; ``max_payload_bytes``: the body bound in bytes,
    ``max_payload_bytes(MaxPayloadInMB)``, 0 for none (bodies stream); ``max_records``:
    at most this many records in a MultiRecord body (``Agent.MaxRecordsPerRequest``), 0
    for no cap; ``bounds``: whole MultiRecord bodies carry their record ends
    (``Body.bounds``). ValueError otherwise.
    """
    cdef _Splitter splitter
    single = _STRATEGIES.get(batch_strategy)
    bound = max_payload_bytes
    if (split_type not in ("None", "Line", "RecordIO", "TFRecord") or single is None
            or type(bound) is not int or bound < 0):
        raise err.bad_arguments(split_type, batch_strategy, bound)
    if type(max_records) is not int or max_records < 0:
        raise err.bad_max_records(max_records)
    # No input holds 2^62 records, so a larger cap is the same as this one.
    cap = 0 if single else min(max_records, 1 << 62)
    if split_type == "Line":
        splitter = _Lines(bound, single, cap)
    elif split_type == "None":
        return _Whole(bound, single, cap)
    else:
        splitter = _Frames(bound, single, cap, split_type == "TFRecord")
    if bounds and bound and not single:
        splitter.ends = _Ends()
    return splitter


@cython.final
cdef class Packer:
    """Packs records the caller already cut (filtered records) under the same bound, and
    at most ``max_records`` of them a body (0: no cap); with ``bounds``, a whole
    MultiRecord body carries its record ends in ``data`` (``Body.bounds``)."""

    cdef bint single
    cdef int64_t bound
    cdef int64_t cap
    cdef list parts
    cdef int64_t size, start, end, k
    cdef _Ends ends

    def __init__(self, batch_strategy, max_payload_bytes, max_records=0, bounds=False):
        single = _STRATEGIES.get(batch_strategy)
        bound = max_payload_bytes
        if single is None or type(bound) is not int or bound < 0:
            raise err.bad_arguments("(packer)", batch_strategy, bound)
        if type(max_records) is not int or max_records < 0:
            raise err.bad_max_records(max_records)
        self.single = single
        self.bound = bound
        self.cap = min(max_records, 1 << 62)
        self.parts = []
        if bounds and bound and not single:
            self.ends = _Ends()

    def add(self, record, int64_t start, int64_t end):
        """Add one record whose input range is ``[start, end)``; maybe complete a body."""
        cdef object data = record if PyBytes_CheckExact(record) else bytes(record)
        cdef int64_t n = PyBytes_GET_SIZE(data)
        cdef object done = None
        if self.bound and n > self.bound:
            raise err.too_large(start, n, self.bound, "filtered")
        if self.single:
            return _body(data, start, end, 1, True, True)
        cdef int64_t k
        if self.bound == 0:
            self.k += 1
            k = self.k
            if k == 1:
                self.start = start
            self.end = end
            if k == self.cap:  # the cap closes the streamed body
                self.k = 0
            return _body(data, self.start, end, k, k == 1, k == self.cap)
        if self.k and (self.size + n > self.bound or self.k == self.cap):
            done = self._cut()
        if not self.k:
            self.start = start
        self.parts.append(data)
        self.size += n
        self.end = end
        self.k += 1
        if self.ends is not None:
            self.ends.add(<uint32_t>self.size)
        return done

    def finish(self):
        """The last body, if records remain (or the closing part of a streamed body)."""
        cdef int64_t k = self.k
        if not k or self.single:
            return None
        if self.bound == 0:
            self.k = 0
            return _body(EMPTY_VIEW, self.start, self.end, k, False, True)
        return self._cut()

    cdef Body _cut(self):
        cdef list parts = self.parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        cdef Body body = _bbody(data, self.start, self.end, self.k,
                                None if self.ends is None else self.ends.take())
        self.parts = []
        self.size = 0
        self.k = 0
        return body
