"""One body's requests: the answer as it is written, with 413 splitting and record isolation
(docs/design.md §2.7, README "Failed records").

A body goes to the model whole. What comes back is checked (``Agent.RequireLinePerRecord``)
and joined (DataProcessing). Two things may cut it into halves by record, at the record
ends the splitter found (``Body.bounds``, ``Batch.bounds``/``input_bounds``), never by
reading the records again:

* **413 Payload Too Large** on a body of more than one record, always: both halves are
  sent, and the smallest refused size is remembered: from then on a body over half of it
  is cut, before it is sent, into runs of records of at most that half (what halving
  would send anyway, without the refusals). Logged once, with both sizes.
* **A failure for good** when ``Agent.MaxFailedRecords`` is set: a 4xx other than 413 and
  429, a 5xx, timeout or reset after its retries, an answer that breaks the line rule or
  DataProcessing's counts. The halves are sent again, recursively, until each failing
  record stands alone: a :class:`FailedRecord`. A model that is down (connection
  refused, its command exited) or overloaded (429 after the retries) fails the file
  as before: that is not the records' fault.

The halves of one body are sent one after the other in the body's request slot, so
``MaxConcurrentTransforms`` still bounds the requests in flight, and their answers come
back in input order. A body whose records have no known ends (a streamed one, with
MaxPayloadInMB 0) is never cut: its failure is its file's, as without isolation.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from bisect import bisect_right
from dataclasses import dataclass, field

import aiohttp
import orjson

from agent import metrics
from agent._compat import MIB, BytesLike
from agent.dataproc import Batch, DataProcessingError, RecordProcessor
from agent.errors import BtAgentError
from agent.model.client import (
    InvocationError,
    Invoker,
    ModelExitedError,
    RequestBody,
    ResponseTooLargeError,
)
from agent.pipeline.lines import (
    LINE_COUNT_INLINE_BYTES,
    LinePerRecordError,
    RecordSpan,
    check_line_per_record,
    line_rule_problem,
)
from agent.split import BodyLike, make_splitter

log = logging.getLogger("agent.invoke")

# A join over more bytes than this runs in a thread, so the event loop keeps serving the
# other requests (orjson parsing is ~4 µs a row).
JOIN_INLINE_BYTES = 256 << 10
ERROR_TEXT_BYTES = 1024  # of an answer or an error, in a failed record's "error"
RECORD_TEXT_BYTES = MIB  # a failed record larger than this is named, not copied


class RecordRefused(BtAgentError):
    """A body of one record got 413 while isolation is off: the file fails, naming it."""


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """A record that failed alone: one line of ``<name>.errors.jsonl``."""

    input: str
    record: int  # 0-based among the file's records
    offset: int  # its first byte in the (uncompressed) input
    length: int  # its bytes in the input
    status: int | None  # the model's HTTP status, None when there was no answer
    error: str  # the first KiB of the answer, or the error
    attempts: int  # requests of the record alone (its last isolation step)
    data: bytes | None  # the record as a SingleRecord body carries it; None past 1 MiB
    output: bytes | None  # what stands in the output for it (the placeholder), if anything

    def entry(self) -> bytes:
        """Its line in the errors file, ``\\n`` included."""
        document: dict[str, object] = {
            "input": self.input,
            "record": self.record,
            "offset": self.offset,
            "length": self.length,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
        }
        if self.data is not None:
            try:
                document["record_text"] = self.data.decode("utf-8")
            except UnicodeDecodeError:
                document["record_base64"] = base64.b64encode(self.data).decode("ascii")
        return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)

    def where(self) -> str:
        """``s3://b/in/x.csv record 7 (byte 812, status 400)`` for the failure reason."""
        status = "no answer" if self.status is None else f"status {self.status}"
        return f"{self.input} record {self.record} (byte {self.offset}, {status})"


@dataclass(slots=True)
class Answered:
    """A body's answer cut by isolation or 413: the outputs to write, in order, and the
    records that failed (in order too; they go to the errors file)."""

    outputs: list[BytesLike] = field(default_factory=list)
    failed: list[FailedRecord] = field(default_factory=list)
    requests: int = 0  # requests beyond the body's first

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.outputs)


class Held:
    """A whole body in memory and where its records end: the halves are cut from it.

    ``sent_ends[i]`` is where record ``i`` ends in ``data``, ``input_ends[i]`` where it
    ends in the input, from ``start`` (the same for a body the splitter cut; DataProcessing
    sends filtered records). ``None`` when the body's records are not known one by one.
    """

    __slots__ = ("uri", "data", "inputs", "start", "end", "first", "records", "sent_ends",
                 "input_ends", "batch")  # fmt: skip

    def __init__(self, uri: str, body: BodyLike, first: int) -> None:
        self.uri = uri
        self.data: BytesLike = body.data
        self.start = body.start
        self.end = body.end
        self.first = first  # the index of the body's first record in the file
        self.records = body.records
        self.batch = body if isinstance(body, Batch) else None
        self.inputs: BytesLike = self.batch.inputs if self.batch is not None else body.data
        sent = getattr(body, "bounds", None)
        taken = getattr(body, "input_bounds", sent)
        self.sent_ends = None if sent is None else memoryview(sent).cast("I")
        self.input_ends = None if taken is None else memoryview(taken).cast("I")

    def sent_at(self, i: int) -> int:
        """Where record ``i`` starts in ``data`` (``i == records``: its length)."""
        if i == 0:
            return 0
        if i == self.records or self.sent_ends is None:
            return len(self.data) if i == self.records else 0
        return self.sent_ends[i - 1]

    def input_at(self, i: int) -> int:
        """Where record ``i`` starts in the input, from ``start``."""
        if i == 0:
            return 0
        if i == self.records or self.input_ends is None:
            return self.end - self.start if i == self.records else 0
        return self.input_ends[i - 1]

    @property
    def cuttable(self) -> bool:
        return self.records > 1 and self.sent_ends is not None and self.input_ends is not None

    def runs_below(self, lo: int, hi: int, limit: int) -> list[tuple[int, int]]:
        """Records ``[lo, hi)`` as consecutive runs of under ``limit`` bytes each (a record
        at or over it alone)."""
        assert self.sent_ends is not None
        runs = []
        while lo < hi:
            base = self.sent_at(lo)
            # The last record ending before base + limit: sent_ends[j - 1] < base + limit.
            j = bisect_right(self.sent_ends, base + limit - 1, lo, hi)
            j = max(j, lo + 1)
            runs.append((lo, j))
            lo = j
        return runs


class Requester:
    """Sends the bodies of every file, cutting them where 413s or isolation say."""

    def __init__(
        self,
        client: Invoker,
        processor: RecordProcessor | None,
        *,
        split_type: str,
        single: bool,
        require_line_per_record: bool,
        isolate: bool,
        placeholder: str | None,
        max_payload_bytes: int,
    ) -> None:
        self.client = client
        self.processor = processor if processor is not None and processor.processes_output else None
        self.split_type = split_type
        self.single = single  # SingleRecord: a body's data is the record's payload already
        self.require_line_per_record = require_line_per_record
        self.isolate = isolate
        self.placeholder = None if placeholder is None else placeholder.encode("utf-8")
        self.max_payload_bytes = max_payload_bytes
        self.refused: int | None = None  # the smallest body size the model answered 413 to

    # ------------------------------------------------------------------ one body

    async def answer(self, held: Held) -> BytesLike | Answered:
        """The answer to a whole body, as written: one buffer when it went in one request."""
        if not self._too_large(held, 0, held.records):
            try:
                return await self._attempt(held, 0, held.records)
            except Exception as error:  # noqa: BLE001 - sorted out in _cut
                out = Answered()
                await self._cut(held, 0, held.records, error, out)
                return out
        out = Answered()
        out.requests = -1  # the first run is the body's own request
        await self._resolve(held, 0, held.records, out)
        return out

    def _too_large(self, held: Held, lo: int, hi: int) -> bool:
        """Whether records ``[lo, hi)`` are to be cut before they are sent (after a 413)."""
        limit = self.refused
        if limit is None or hi - lo < 2 or not held.cuttable:
            return False
        return held.sent_at(hi) - held.sent_at(lo) > limit // 2

    async def streamed(self, payload: RequestBody, what: str, span: RecordSpan | None) -> BytesLike:
        """A streamed body (MaxPayloadInMB 0): one request, never cut."""
        data: BytesLike = await self.client.invoke(payload, what=what)
        if span is not None and self.require_line_per_record:
            await check_line_per_record(data, span)
        return data

    async def _resolve(self, held: Held, lo: int, hi: int, out: Answered) -> None:
        """Records ``[lo, hi)`` of ``held``: sent (once more), and cut again if need be."""
        if self._too_large(held, lo, hi):
            assert self.refused is not None
            metrics.current().body_splits.labels(reason="payload_too_large").inc()
            for a, b in held.runs_below(lo, hi, self.refused // 2 + 1):
                await self._resolve(held, a, b, out)
            return
        out.requests += 1
        try:
            out.outputs.append(await self._attempt(held, lo, hi))
        except Exception as error:  # noqa: BLE001 - sorted out in _cut
            await self._cut(held, lo, hi, error, out)

    async def _cut(self, held: Held, lo: int, hi: int, error: Exception, out: Answered) -> None:
        """Records ``[lo, hi)`` failed with ``error``: cut them in halves, fail the record
        they are, or raise ``error`` (the file fails)."""
        refused = isinstance(error, InvocationError) and error.status == 413
        isolating = self.isolate and _isolatable(error)
        many = hi - lo > 1
        if many and held.cuttable and (refused or isolating):
            if refused:
                self._remember_refusal(held.sent_at(hi) - held.sent_at(lo))
            reason = "payload_too_large" if refused else "isolation"
            metrics.current().body_splits.labels(reason=reason).inc()
            mid = (lo + hi) // 2
            await self._resolve(held, lo, mid, out)
            await self._resolve(held, mid, hi, out)
            return
        if many or not isolating:  # many: no record ends known, so the body fails whole
            if refused and not many:
                raise RecordRefused(self._refusal(held, lo, error)) from error
            raise error
        failed = await self._failed(held, lo, error)
        out.failed.append(failed)
        if failed.output is not None:
            out.outputs.append(failed.output)

    async def _attempt(self, held: Held, lo: int, hi: int) -> BytesLike:
        """One request for records ``[lo, hi)``: the answer, checked and joined."""
        whole = lo == 0 and hi == held.records
        payload = held.data if whole else _slice(held.data, held.sent_at(lo), held.sent_at(hi))
        start = held.start + held.input_at(lo)
        end = held.start + held.input_at(hi)
        what = f"{held.uri} bytes [{start}, {end})"
        data: BytesLike = await self.client.invoke(payload, what=what)
        if self.require_line_per_record:
            span = RecordSpan(held.uri, held.first + lo, start, end, hi - lo)
            if len(data) < LINE_COUNT_INLINE_BYTES:
                problem = line_rule_problem(data, hi - lo)
            else:
                problem = await asyncio.to_thread(line_rule_problem, data, hi - lo)
            if problem is not None:
                raise LinePerRecordError(span, problem)
        if held.batch is not None and self.processor is not None:
            inputs = (
                held.inputs if whole else _slice(held.inputs, held.input_at(lo), held.input_at(hi))
            )
            data = await _join(self.processor, inputs, data, what, start)
        return data

    # ------------------------------------------------------------------ failures

    def _remember_refusal(self, size: int) -> None:
        if self.refused is not None and size >= self.refused:
            return
        first = self.refused is None
        self.refused = size
        if first:
            log.warning(
                "the model refused a %d-byte body with 413 Payload Too Large (MaxPayloadInMB "
                "allows %d bytes); from now on bodies over %d bytes are cut into runs of "
                "records of at most that size before they are sent",
                size,
                self.max_payload_bytes,
                size // 2,
            )

    def _refusal(self, held: Held, i: int, error: Exception) -> str:
        size = held.sent_at(i + 1) - held.sent_at(i)
        start = held.start + held.input_at(i)
        return (
            f"{held.uri} record {held.first + i} (byte {start}, {size} bytes sent): the model "
            "refused it "
            f"with 413 Payload Too Large even alone ({error}); the model's own body limit is "
            "below this record: raise it, or set Agent.MaxFailedRecords to write the record "
            "to the errors file and go on"
        )

    async def _failed(self, held: Held, i: int, error: Exception) -> FailedRecord:
        """Record ``i`` of ``held`` failed alone with ``error``."""
        start, end = held.input_at(i), held.input_at(i + 1)
        sent = _slice(held.data, held.sent_at(i), held.sent_at(i + 1))
        data: bytes | None = None
        if len(sent) <= RECORD_TEXT_BYTES + 16:
            data = self._payload(bytes(sent))
            if len(data) > RECORD_TEXT_BYTES:
                data = None
        status = error.status if isinstance(error, InvocationError) else None
        if isinstance(error, LinePerRecordError | DataProcessingError):
            status = 200  # answered, but the answer broke a rule
        attempts = error.attempts if isinstance(error, InvocationError) else 1
        if isinstance(error, InvocationError) and error.body_excerpt is not None:
            text = error.body_excerpt
        else:
            text = str(error)
        text = text.encode("utf-8", "replace")[:ERROR_TEXT_BYTES].decode("utf-8", "ignore")
        output: bytes | None = None
        if self.placeholder is not None:
            output = self.placeholder
            if held.batch is not None and self.processor is not None:
                inputs = _slice(held.inputs, start, end)
                what = f"{held.uri} record {held.first + i} (the FailedRecordPlaceholder)"
                output = await _join(
                    self.processor, inputs, self.placeholder + b"\n", what, held.start + start
                )
        return FailedRecord(
            input=held.uri,
            record=held.first + i,
            offset=held.start + start,
            length=end - start,
            status=status,
            error=text,
            attempts=attempts,
            data=data,
            output=output,
        )

    def _payload(self, sent: bytes) -> bytes:
        """A record as a SingleRecord body carries it: a MultiRecord RecordIO or TFRecord
        record comes framed, as in the file, and is unframed here."""
        if self.single or self.split_type not in ("RecordIO", "TFRecord"):
            return sent
        splitter = make_splitter(self.split_type, "SingleRecord", max(len(sent), 1))
        bodies = [*splitter.feed(sent), *splitter.finish()]
        return b"".join(bytes(body.data) for body in bodies)


def _isolatable(error: BaseException) -> bool:
    """Whether ``error`` may be a record's fault (else the model is down or overloaded)."""
    if isinstance(error, LinePerRecordError | DataProcessingError | ResponseTooLargeError):
        return True
    if not isinstance(error, InvocationError) or isinstance(error, ModelExitedError):
        return False
    if error.status is not None:
        return error.status != 429
    return not isinstance(error.__cause__, aiohttp.ClientConnectorError)


def _slice(data: BytesLike, start: int, end: int) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    return view[start:end]


async def _join(
    processor: RecordProcessor, inputs: BytesLike, data: BytesLike, what: str, start: int
) -> bytes:
    """JoinSource and OutputFilter over one answer; big answers off the event loop."""
    join = functools.partial(processor.assemble, inputs, data, what=what, start=start)
    if len(data) + len(inputs) < JOIN_INLINE_BYTES:
        return join()
    return await asyncio.to_thread(join)
