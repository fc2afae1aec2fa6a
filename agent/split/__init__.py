"""Records and request bodies (docs/design.md §2): input chunks in, request bodies out.

Usage, one splitter per input object::

    splitter = make_splitter("Line", "MultiRecord", max_payload_bytes(6), max_records=0)
    async for chunk in stream:              # chunks of any size, cut anywhere
        for body in splitter.feed(chunk):
            send(body)
    for body in splitter.finish():          # raises if the input ends mid-record
        send(body)

**Bodies.** ``feed`` and ``finish`` return lists of :class:`Body` in input order:

* ``data`` — the bytes to send. ``start``/``end`` — the input byte range ``[start, end)``
  the body was cut from (absolute offsets in the uncompressed input); ``records`` —
  how many records it holds. ``first``/``last`` — see streaming below.
* With a bound (``max_payload_bytes > 0``) every item is a whole body: ``first`` and
  ``last`` are both true and ``data`` is ``bytes`` of at most the bound. MultiRecord bodies
  are runs of whole records exactly as in the file, as many as fit (their concatenation is
  the input); SingleRecord bodies are one record each — for RecordIO and TFRecord the
  payload only (RecordIO parts joined by the 4 magic bytes).
* ``max_records`` (``Agent.MaxRecordsPerRequest``; 0, the default, for none) caps the
  records of a MultiRecord body: a body ends after that many records or at the bound,
  whichever comes first, so where the bound comes first the bodies are those without the
  cap. It applies to streamed bodies too (each closes after its last record and the next
  opens). SingleRecord and None bodies hold one record anyway: the cap changes nothing.
* With bound 0 a body is streamed as *parts* and never held whole: ``first`` marks the
  part that opens a body, ``last`` the part that closes it (both may be set). ``data``
  is a ``memoryview`` of the fed chunk (or empty): write it out before changing that
  chunk. ``start`` is the body's start in every part; ``end`` and ``records`` are running
  totals, final in the ``last`` part. MultiRecord (without a cap) and None give one body
  for the whole input, one part per chunk; SingleRecord streams each record.
* Empty input gives no body. ``feed(b"")`` returns ``[]``.
* ``bounds`` (``make_splitter(..., bounds=True)``; off by default): each whole bounded
  MultiRecord body (Line, RecordIO, TFRecord) says where its records end, so it can be
  cut in halves by record without parsing it again. ``bounds`` is ``bytes`` of
  ``records`` little-endian uint32 values, each the end of a record relative to
  ``start`` (so also an offset into ``data``); the last is ``end - start``, and record
  ``i`` is ``data[bounds[i-1]:bounds[i]]`` (with ``bounds[-1]`` read as 0). A Line
  record is a line (the final one may lack its newline); a RecordIO record ends with
  the frame that closes it (cflag 0 or 3); a TFRecord record is a frame. In every other
  case (flag off, SingleRecord, None, streamed parts) ``bounds`` is ``None``.

**Memory.** A splitter holds at most the bound (plus RecordIO part framing) of input
between calls, however the input is framed: a TFRecord length claiming petabytes is only
counted down. Chunks given as ``bytes`` are referenced, not copied, while held, and each
byte is copied at most once into its body; other buffer types are copied when held.

**Errors.** :class:`CorruptInputError` (truncated frame, bad magic, bad checksum, RecordIO
cflag out of order) and :class:`RecordTooLargeError` (``size`` over ``limit``) are both
:class:`SplitError` with the byte ``offset``; ``error.in_file(name)`` prefixes the file.
A record over the bound is reported with its exact size, so the splitter reads on (holding
nothing) to the record's end; for ``None`` that is the end of the object, so check the
object size first where it is known. After an error the splitter raises it again.

:class:`Packer` packs records the caller cut itself (DataProcessing's filtered records)
under the same bound (and cap): ``Packer(batch_strategy, max_payload_bytes, max_records=0,
bounds=False)``; ``add(record, start, end)`` returns a completed :class:`Body` or ``None``;
``finish()`` the last one. With ``bounds`` a whole MultiRecord body's ``bounds`` are the
ends of its records in ``data`` (the records joined; their input ranges may have gaps).

**Shards** (docs/design.md §2.8, ``agent/split/shards.py``): :class:`StartFinder` finds the
first record boundary at or after a byte offset, :class:`RecordWalk` cuts a stream read
from a boundary at the first boundary at or after a shard's end; the cut stream goes to a
splitter as any input does. ``SHARDABLE_SPLIT_TYPES`` are the split types they handle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent._compat import NO_EXTENSIONS
from agent.split._errors import (
    CorruptInputError,
    RecordTooLargeError,
    SplitError,
    SplitterStateError,
)
from agent.split._protocols import BodyLike, PackerLike, SplitterLike
from agent.split.shards import SHARDABLE_SPLIT_TYPES, RecordWalk, StartFinder

if TYPE_CHECKING or NO_EXTENSIONS:
    from agent.split._splitters_py import Body, Packer, implementation, make_splitter
else:
    try:
        from agent.split._splitters_c import Body, Packer, implementation, make_splitter
    except ImportError:  # pragma: no cover - a source tree that was never built
        from agent.split._splitters_py import Body, Packer, implementation, make_splitter

__all__ = [
    "Body",
    "BodyLike",
    "CorruptInputError",
    "IS_NATIVE",
    "Packer",
    "PackerLike",
    "RecordTooLargeError",
    "RecordWalk",
    "SHARDABLE_SPLIT_TYPES",
    "SplitError",
    "SplitterLike",
    "SplitterStateError",
    "StartFinder",
    "implementation",
    "make_splitter",
    "max_payload_bytes",
]

IS_NATIVE: bool = implementation() != "python"


def max_payload_bytes(max_payload_mb: int) -> int:
    """The body bound for ``MaxPayloadInMB``: MiB as SageMaker means them; 0 = no bound."""
    return max_payload_mb << 20
