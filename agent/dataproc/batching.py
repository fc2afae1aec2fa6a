"""Bodies with DataProcessing: records cut, filtered, then packed (docs/design.md §2.4, §2.5).

:class:`RecordBatcher` takes one input object's chunks, as the splitters do, and returns
:class:`Batch` objects: the body to send (filtered records, under the MaxPayload bound)
together with the same records unfiltered, exactly as in the input (``inputs``), which
``RecordProcessor.assemble`` needs to join answers with their records.

* SplitType Line: a record is a line. Each run of whole lines a chunk completes is
  filtered in one call (``RecordProcessor.filter_rows``: compiled for CSV), which also
  says where each record starts; bodies are then cut at those offsets by bisection,
  with no per-record Python work: a MultiRecord body holds as many filtered records as
  fit in the bound, and at most ``max_records`` (``Agent.MaxRecordsPerRequest``) when
  that is set; a SingleRecord body one.
* SplitType None: the object is one record, filtered whole once it has been read.
* InputFilter ``$``: the compiled splitters cut the bodies; ``inputs`` is the body itself.

With ``bounds=True`` each MultiRecord batch of SplitType Line also says where its records
end, so the pipeline can cut it in halves by record without parsing it again
(docs/design.md §2.4): ``bounds`` in ``data`` (the filtered body) and ``input_bounds`` in
``inputs``, both ``records`` little-endian uint32 values relative to the start of their
bytes, the last one their length. They come from the offsets filtering already gave (or,
for ``$``, from the splitter's ``Body.bounds``, and then both are the same object); both
are ``None`` without the flag and for SingleRecord or SplitType None.

Bounds (decisions): the bound applies to the filtered bytes, so a record may be larger
before filtering — up to ``max_input_bytes`` (default four times the bound), which also
caps the unfiltered bytes one batch keeps; a larger record fails its file. Since each
batch's inputs are held for the join and its body for a retry, MaxPayloadInMB = 0 (no
bound, bodies streamed) becomes the largest bound SageMaker allows, 100 MiB.
"""

from __future__ import annotations

import struct
from bisect import bisect_right

from agent._compat import MIB, BytesLike
from agent.dataproc.processor import RecordProcessor
from agent.job import BATCH_STRATEGIES
from agent.split import BodyLike, RecordTooLargeError, make_splitter

UNBOUNDED_BODY_BYTES = 100 * MIB  # MaxPayloadInMB=0 with DataProcessing
INPUT_FACTOR = 4  # unfiltered bytes a batch may hold, per byte of bound


class Batch:
    """One whole request body and the unfiltered input records it was made from."""

    __slots__ = ("data", "inputs", "start", "end", "records", "bounds", "input_bounds")

    def __init__(
        self,
        data: bytes,
        inputs: bytes,
        start: int,
        end: int,
        records: int,
        bounds: bytes | None = None,
        input_bounds: bytes | None = None,
    ) -> None:
        self.data = data  # what to send
        self.inputs = inputs  # input bytes [start, end), as in the file
        self.start = start
        self.end = end
        self.records = records
        self.bounds = bounds  # record ends in data (uint32 LE), or None; see the module doc
        self.input_bounds = input_bounds  # ... and in inputs

    @property
    def first(self) -> bool:
        return True  # a Batch is always a whole body, never a streamed part

    @property
    def last(self) -> bool:
        return True

    def __repr__(self) -> str:
        return (
            f"<batch [{self.start}, {self.end}) records={self.records} "
            f"bytes={len(self.data)} input_bytes={len(self.inputs)}>"
        )


class RecordBatcher:
    """Bodies for one input object: ``feed`` chunks, then ``finish`` (see the module doc)."""

    def __init__(
        self,
        processor: RecordProcessor,
        batch_strategy: str,
        max_payload_bytes: int,
        *,
        max_input_bytes: int | None = None,
        max_records: int = 0,
        bounds: bool = False,
    ) -> None:
        if batch_strategy not in BATCH_STRATEGIES or max_payload_bytes < 0 or max_records < 0:
            raise ValueError(
                f"bad batching: {batch_strategy!r}, {max_payload_bytes} bytes, "
                f"{max_records} records"
            )
        self.processor = processor
        self.bound = max_payload_bytes or UNBOUNDED_BODY_BYTES
        self.max_input_bytes = max_input_bytes or INPUT_FACTOR * self.bound
        self._single = batch_strategy == "SingleRecord"
        # Records a MultiRecord body may still take when it is empty; 0: no cap.
        self.max_records = 0 if self._single else max_records
        split_type = "Line" if processor.lines else "None"
        # Record ends for each MultiRecord Line batch (see the module doc).
        self._bounds = bool(bounds) and not self._single and processor.lines
        self._plain = (
            None
            if processor.filters_input
            else make_splitter(
                split_type, batch_strategy, self.bound, self.max_records, self._bounds
            )
        )
        self._ends: list[int] = []  # with bounds: record ends in the batch's body ...
        self._input_ends: list[int] = []  # ... and in its inputs
        self._pending: list[bytes | memoryview] = []  # a record not yet complete
        self._pending_bytes = 0
        self._pos = 0  # input offset of the first pending byte
        # The batch being filled: filtered records, unfiltered runs, sizes.
        # Views into the buffers of the last feed, copied once when the batch is cut.
        self._body: list[bytes | memoryview] = []
        self._runs: list[bytes | memoryview] = []
        self._size = 0
        self._raw = 0
        self._records = 0
        self._start = 0

    def feed(self, chunk: BytesLike) -> list[Batch]:
        """Batches completed by ``chunk``, in input order."""
        data = chunk if type(chunk) is bytes else bytes(chunk)
        if self._plain is not None:
            return [_batch(body) for body in self._plain.feed(data)]
        if not data:
            return []
        cut = data.rfind(b"\n") if self.processor.lines else -1
        if cut < 0:
            self._hold(data)
            return []
        if self._pending:
            self._pending.append(memoryview(data)[: cut + 1])
            whole = b"".join(self._pending)  # the one copy of these input bytes
        else:
            whole = data if cut + 1 == len(data) else data[: cut + 1]
        self._pending, self._pending_bytes = [], 0
        out: list[Batch] = []
        self._take(whole, out)
        if cut + 1 < len(data):
            self._hold(data[cut + 1 :])
        return out

    def finish(self) -> list[Batch]:
        """The last batches: the final record (with or without a ``\\n``) included."""
        if self._plain is not None:
            return [_batch(body) for body in self._plain.finish()]
        out: list[Batch] = []
        if self._pending:
            whole = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._take(whole, out)
        if self._body:
            out.append(self._cut())
        return out

    # ------------------------------------------------------------------ internals

    def _hold(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self.max_input_bytes:
            raise self._raw_too_large(self._pos, self._pending_bytes, partial=True)

    def _too_large(self, offset: int, size: int) -> RecordTooLargeError:
        bound = self.bound
        setting = f" (MaxPayloadInMB={bound // MIB})" if bound % MIB == 0 else ""
        return RecordTooLargeError(
            offset,
            f"the record at byte {offset} is {size} bytes after InputFilter, over the "
            f"{bound}-byte bound{setting}; raise MaxPayloadInMB or filter out more",
            size,
            bound,
        )

    def _raw_too_large(
        self, offset: int, size: int, *, partial: bool = False
    ) -> RecordTooLargeError:
        limit = self.max_input_bytes
        if partial:
            head = f"the record at byte {offset} is longer than {limit} bytes ({size} read)"
        else:
            head = f"the record at byte {offset} is {size} bytes before InputFilter, over {limit}"
        return RecordTooLargeError(
            offset,
            f"{head}: with DataProcessing a record may be at most four times the "
            "MaxPayloadInMB bound before it is filtered; raise MaxPayloadInMB or split the record",
            size,
            limit,
        )

    def _take(self, whole: bytes, out: list[Batch]) -> None:
        """Filter and pack the records of ``whole`` (whole records, from ``self._pos``)."""
        base = self._pos
        self._pos += len(whole)
        if self.processor.lines:
            sent_bytes, sent, read = self.processor.filter_rows(whole, base)
        else:
            sent_bytes = self.processor.filter_input(whole, offset=base)
            sent, read = [0, len(sent_bytes)], [0, len(whole)]
        count = len(sent) - 1
        cap = self.max_records
        i = 0
        while i < count:
            # The most records from i on that fit in what the open batch has left.
            j = min(
                i + 1 if self._single else count,
                i + cap - self._records if cap else count,
                bisect_right(sent, sent[i] + self.bound - self._size, lo=i) - 1,
                bisect_right(read, read[i] + self.max_input_bytes - self._raw, lo=i) - 1,
            )
            if j == i:
                if self._body:  # full: the next record starts a new batch
                    out.append(self._cut())
                    continue
                size = sent[i + 1] - sent[i]
                if size > self.bound:
                    raise self._too_large(base + read[i], size)
                raise self._raw_too_large(base + read[i], read[i + 1] - read[i])
            if not self._body:
                self._start = base + read[i]
            if self._bounds:
                at, raw_at = self._size - sent[i], self._raw - read[i]
                self._ends.extend([at + end for end in sent[i + 1 : j + 1]])
                self._input_ends.extend([raw_at + end for end in read[i + 1 : j + 1]])
            self._body.append(_part(sent_bytes, sent[i], sent[j]))
            self._runs.append(_part(whole, read[i], read[j]))
            self._size += sent[j] - sent[i]
            self._raw += read[j] - read[i]
            self._records += j - i
            i = j
            # SingleRecord, full (the next did not fit), or at the cap
            if self._single or i < count or self._records == cap:
                out.append(self._cut())

    def _cut(self) -> Batch:
        data, inputs = _joined(self._body), _joined(self._runs)
        batch = Batch(data, inputs, self._start, self._start + len(inputs), self._records)
        if self._bounds:
            batch.bounds, batch.input_bounds = _u32s(self._ends), _u32s(self._input_ends)
            self._ends, self._input_ends = [], []
        self._body, self._runs = [], []
        self._size = self._raw = self._records = 0
        return batch


def _part(data: bytes, start: int, end: int) -> bytes | memoryview:
    """``data[start:end]``, as a view unless it is all of ``data``."""
    return data if start == 0 and end == len(data) else memoryview(data)[start:end]


def _joined(parts: list[bytes | memoryview]) -> bytes:
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    return b"".join(parts)


def _u32s(values: list[int]) -> bytes:
    """Record ends as ``Batch.bounds`` holds them: little-endian uint32 values."""
    return struct.pack(f"<{len(values)}I", *values)


def _batch(body: BodyLike) -> Batch:
    """A splitter's body (InputFilter ``$``) as a batch whose inputs are the body itself."""
    data = body.data
    raw = data if type(data) is bytes else bytes(data)
    ends = body.bounds
    return Batch(raw, raw, body.start, body.end, body.records, ends, ends)
