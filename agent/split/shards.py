"""Where a shard of one uncompressed input starts and where it ends (docs/design.md §2.8).

A shard is a byte range ``[s, e)`` of one uncompressed Line, RecordIO or TFRecord input.
Two pieces, both fed the object's bytes in chunks of any size, cut anywhere:

* :class:`StartFinder` guesses the first record boundary at or after ``s`` by looking at the
  bytes there only (the rule of docs/design.md §2.8). For Line the guess is always right; for
  RecordIO and TFRecord a payload may hold bytes that pass for a frame, so the guess can be
  wrong.
* :class:`RecordWalk` follows the record chain from a boundary the caller trusts and cuts
  the stream at the first record boundary at or after ``e``: the shard takes exactly the
  records that start before ``e``, the one that crosses ``e`` finished. ``finish()`` is
  ``L``, where the shard's last record ends.

The proof (docs/design.md §2.8): shard 0 starts at 0; shard *k+1*'s guessed start is right
iff it equals shard *k*'s ``L``, otherwise shard *k+1* is redone from that ``L``.

Usage::

    finder = StartFinder("TFRecord", s, size, max_record)
    for chunk in read(obj, start=finder.read_from):
        if (b := finder.feed(chunk)) is not None:
            break
    else:
        b = finder.finish()

    walk = RecordWalk("TFRecord", b, e)
    for chunk in read(obj, start=b):
        n = walk.feed(chunk)
        splitter.feed(chunk if n is None else chunk[:n])
        if n is not None:
            break
    L = walk.finish()
"""

from __future__ import annotations

import re
import struct

from agent._compat import BytesLike
from agent.codec import crc32c
from agent.split._errors import RECORDIO_MAGIC

__all__ = ["SHARDABLE_SPLIT_TYPES", "RecordWalk", "StartFinder"]

SHARDABLE_SPLIT_TYPES = ("Line", "RecordIO", "TFRecord")

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RIO_HEADER = struct.Struct("<II")  # magic, lrec
_MAGIC_BYTES = _U32.pack(RECORDIO_MAGIC)
_LEN_MASK = (1 << 29) - 1
_TF_HEADER = 12  # uint64 length, uint32 masked CRC of those 8 bytes
_TF_EXTRA = 16  # header and the payload's CRC
_ZERO12 = bytes(_TF_HEADER)
_NONZERO = re.compile(rb"[^\x00]")
_HEADER_SIZE = {"Line": 0, "RecordIO": 8, "TFRecord": _TF_HEADER}


def _check_split_type(split_type: str) -> None:
    if split_type not in SHARDABLE_SPLIT_TYPES:
        raise ValueError(
            f"cannot find record boundaries for SplitType={split_type!r}: only Line, RecordIO "
            "and TFRecord inputs can be cut into shards"
        )


def _check_offset(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r}: expected a byte offset, an integer of 0 or more")


class StartFinder:
    """The first record boundary at or after ``at`` of an object of ``size`` bytes.

    Feed the object's bytes from :attr:`read_from` on, in chunks of any size; ``feed``
    returns the boundary (an absolute offset) once found, else ``None`` (feed more);
    ``finish`` at the end of the object returns ``size`` (no record starts at or after
    ``at``). ``at == 0`` is always 0 and ``at >= size`` always ``size``: ``boundary`` is
    then set before any byte is fed, and ``feed`` returns it at once.

    * Line: just after the first ``\\n`` at or after ``at - 1`` (``read_from = at - 1``).
      Always a true boundary.
    * RecordIO (docs/design.md §2.2): the first 4-byte-aligned offset ``p >= at`` holding
      the magic, whose header has cflag 0 or 1 and whose frame (header, payload, padding)
      fits in the object (``read_from`` is ``at`` rounded up to a multiple of 4). Holds at
      most one header between calls.
    * TFRecord (§2.3): the first offset ``p >= at`` whose 8 length bytes' masked CRC-32C
      matches the next 4 bytes, whose length is at most ``max_record``, whose frame fits
      in the object, and whose payload's masked CRC matches the 4 bytes after it
      (``read_from = at``). Memory: the candidate being checked (at most ``max_record +
      16`` bytes) plus the chunk fed; a true frame over ``max_record`` is passed over, and
      the proof catches the boundary so missed.

    A RecordIO or TFRecord boundary found this way may be a false one (a payload can hold
    the magic and a header, or whole valid frames): the caller proves it against the
    previous shard's end (module docstring).
    """

    def __init__(self, split_type: str, at: int, size: int, max_record: int) -> None:
        _check_split_type(split_type)
        _check_offset("at", at)
        _check_offset("size", size)
        if not isinstance(max_record, int) or isinstance(max_record, bool) or max_record < 1:
            raise ValueError(f"max_record={max_record!r}: expected a record size of 1 or more")
        self.split_type = split_type
        self.at = at
        self.size = size
        self.max_record = max_record
        self.boundary: int | None = None
        if at == 0 or at >= size:
            self.boundary = min(at, size)
            self.read_from = self.boundary
        elif split_type == "Line":
            self.read_from = at - 1
        elif split_type == "RecordIO":
            self.read_from = (at + 3) & ~3
            if self.read_from >= size:
                self.boundary = size
        else:
            self.read_from = at
        self._pos = self.read_from  # absolute offset of _buf[0] (Line: of the next chunk)
        self._buf = bytearray()  # RecordIO, TFRecord: bytes not yet ruled out
        self._want = 0  # TFRecord: the frame size of the candidate at _buf[0], 0 for none
        # TFRecord: a length of at most max_record has this many high bytes zero.
        self._zeros = bytes(8 - max(1, (max_record.bit_length() + 7) // 8))

    @property
    def held(self) -> int:
        """Bytes held between calls (the memory bound of the class docstring)."""
        return len(self._buf)

    def feed(self, chunk: BytesLike) -> int | None:
        """The boundary once found (absolute offset), else ``None``: feed more."""
        if self.boundary is not None:
            return self.boundary
        if not chunk:
            return None
        if self.split_type == "Line":
            data = chunk if isinstance(chunk, bytes | bytearray) else bytes(chunk)
            i = data.find(b"\n")
            if i >= 0:
                self.boundary = self._pos + i + 1
                return self.boundary
            self._pos += len(data)
            return None
        self._buf += chunk
        if self.split_type == "RecordIO":
            self._scan_recordio()
        else:
            self._scan_tfrecord()
        return self.boundary

    def finish(self) -> int:
        """The boundary: the one found, or ``size`` when the object ended without one."""
        if self.boundary is None:
            self.boundary = self.size
            self._buf = bytearray()
        return self.boundary

    def _keep_from(self, i: int) -> None:
        """Drop the bytes before ``_buf[i]``: they start no candidate."""
        if i:
            del self._buf[:i]
            self._pos += i

    def _scan_recordio(self) -> None:
        buf, size, pos = self._buf, self.size, self._pos  # _pos is a multiple of 4
        n = len(buf)
        i = 0
        while True:
            j = buf.find(_MAGIC_BYTES, i)
            if j < 0:
                # An aligned magic may still straddle the end: keep the last partial word.
                i = max(i, n & ~3)
                break
            if j & 3:
                i = (j + 3) & ~3
                continue
            if j + 8 > n:
                i = j  # its header is not whole yet
                break
            lrec = _U32.unpack_from(buf, j + 4)[0]
            length = lrec & _LEN_MASK
            if lrec >> 29 <= 1 and pos + j + 8 + length + (-length % 4) <= size:
                self.boundary = pos + j
                self._buf = bytearray()
                return
            i = j + 4
        self._keep_from(i)

    def _scan_tfrecord(self) -> None:
        buf, size, zeros = self._buf, self.size, self._zeros
        n = len(buf)
        top = 8 - len(zeros)  # where the length's zero high bytes start
        i = 0
        while True:
            if self._want:  # a candidate at buf[i] whose header checked: its payload CRC
                want = self._want
                if n - i < want:
                    break
                stored = _U32.unpack_from(buf, i + want - 4)[0]
                with memoryview(buf) as view, view[i + _TF_HEADER : i + want - 4] as payload:
                    good = crc32c.masked(payload) == stored
                if good:
                    self.boundary = self._pos + i
                    self._buf = bytearray()
                    return
                self._want = 0
                i += 1
                continue
            if zeros:
                j = buf.find(zeros, i + top)
                if j < 0:
                    i = max(i, n - 7)  # candidates whose length bytes are not all here
                    break
                p = j - top
            else:
                p = i
            if p + _TF_HEADER > n:
                i = p
                break
            if buf[p : p + _TF_HEADER] == _ZERO12:
                # A run of zeros: an all-zero length has a nonzero CRC, so no candidate
                # starts in it until 11 bytes before its end.
                m = _NONZERO.search(buf, p)
                i = max(p + 1, (m.start() if m else n) - (_TF_HEADER - 1))
                continue
            length = _U64.unpack_from(buf, p)[0]
            if (
                length > self.max_record
                or self._pos + p + _TF_EXTRA + length > size
                or crc32c.masked(buf[p : p + 8]) != _U32.unpack_from(buf, p + 8)[0]
            ):
                i = p + 1
                continue
            self._want = _TF_EXTRA + length
            i = p
        self._keep_from(i)


class RecordWalk:
    """Follows the record chain from ``first`` (a boundary) and cuts the stream at the
    first record boundary at or after ``stop``.

    Feed the object's bytes from ``first`` on. ``feed`` returns ``None`` when the whole
    chunk belongs to the shard, else how many leading bytes of it do (possibly all of
    them, possibly 0); the walk is then :attr:`done`: feed no more (a further ``feed``
    returns 0). ``finish`` returns ``L``, the shard's end (absolute): the cut, or, when
    the object ended first, the position reached (the end of the bytes fed).
    ``first >= stop``: the shard has no records, ``done`` is set at once and ``L`` is
    ``first``.

    * Line: the cut is just after the first ``\\n`` at or after ``stop - 1`` (one
      ``bytes.find`` per chunk from there; nothing is done per record).
    * RecordIO (docs/design.md §2.2): frame headers are walked (8 + length padded to 4);
      the cut is at the first frame start at or after ``stop`` where no multi-part record
      is open (the previous frame had cflag 0 or 3), so a record's parts stay together.
    * TFRecord (§2.3): frame headers are walked (16 + length), each length's CRC checked;
      every frame start is a boundary. Payloads are not read.

    A header that does not parse (RecordIO: bad magic or a cflag over 3; TFRecord: a bad
    length CRC) or the object ending inside a frame stops the walk: every further byte
    passes through (``feed`` returns ``None``) and ``finish`` returns the position
    reached, the end of the object. The splitter behind the walk reads the same bytes
    and reports the corrupt input with its offset. Walked from a boundary that was not
    a true one, this is what usually happens: the caller decides by the proof whether
    such an error is the input's.
    """

    def __init__(self, split_type: str, first: int, stop: int) -> None:
        _check_split_type(split_type)
        _check_offset("first", first)
        _check_offset("stop", stop)
        self.split_type = split_type
        self.first = first
        self.stop = stop
        self._pos = first  # absolute offset of the next byte fed
        self._next = first  # RecordIO, TFRecord: where the next frame starts
        self._hsize = _HEADER_SIZE[split_type]
        self._hdr = bytearray()  # a header cut by the end of a chunk
        self._open = False  # RecordIO: a multi-part record is open
        self._broken = False  # a header did not parse: pass everything through
        self.done = first >= stop
        self._end = first

    @property
    def broken(self) -> bool:
        """A header did not parse: the walk passes every byte through to the end."""
        return self._broken

    def feed(self, chunk: BytesLike) -> int | None:
        """``None``: the whole chunk belongs to the shard; else how many leading bytes do."""
        if self.done:
            return 0
        n = len(chunk)
        if self._broken or n == 0:
            self._pos += n
            return None
        if self.split_type == "Line":
            return self._feed_line(chunk, n)
        return self._feed_frames(chunk, n)

    def finish(self) -> int:
        """``L``: the end of the shard's last record (absolute), or the position reached."""
        return self._end if self.done else self._pos

    def _cut(self, taken: int) -> int:
        self.done = True
        self._end = self._pos + taken
        return taken

    def _feed_line(self, chunk: BytesLike, n: int) -> int | None:
        look = self.stop - 1 - self._pos
        if look < n:
            data = chunk if isinstance(chunk, bytes | bytearray) else bytes(chunk)
            i = data.find(b"\n", max(look, 0))
            if i >= 0:
                return self._cut(i + 1)
        self._pos += n
        return None

    def _feed_frames(self, chunk: BytesLike, n: int) -> int | None:
        pos, hsize = self._pos, self._hsize
        end = pos + n
        while True:
            if self._hdr:  # a header begun in an earlier chunk, at _next < pos
                hdr = self._hdr
                hdr += chunk[: hsize - len(hdr)]
                if len(hdr) < hsize:
                    break
                self._hdr = bytearray()
                if not self._header(hdr, 0):
                    break
                continue
            f = self._next
            if f > end:
                break
            if f >= self.stop and not self._open:
                return self._cut(f - pos)
            if f == end:
                break
            rel = f - pos
            if rel + hsize > n:
                self._hdr = bytearray(chunk[rel:])
                break
            if not self._header(chunk, rel):
                break
        self._pos = end
        return None

    def _header(self, buf: BytesLike, at: int) -> bool:
        """Step over the frame whose header is ``buf[at:at + hsize]``; False if it is bad."""
        if self.split_type == "RecordIO":
            magic, lrec = _RIO_HEADER.unpack_from(buf, at)
            cflag = lrec >> 29
            if magic != RECORDIO_MAGIC or cflag > 3:
                self._broken = True
                return False
            length = lrec & _LEN_MASK
            self._next += 8 + length + (-length % 4)
            self._open = cflag in (1, 2)
            return True
        length = _U64.unpack_from(buf, at)[0]
        if crc32c.masked(buf[at : at + 8]) != _U32.unpack_from(buf, at + 8)[0]:
            self._broken = True
            return False
        self._next += _TF_EXTRA + length
        return True
