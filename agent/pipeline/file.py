"""The per-file pipeline: source → split → invoke → assemble → sink, for many files at once.

Bounds, each a setting and none a function of input size:

* ``slots`` — requests alive at once (``MaxConcurrentTransforms``), shared by every file,
  so many small files keep the model as busy as one big one. A request keeps its slot
  until its response is written, unless it finished *early* (before a request ahead of
  it in the same file): then it gives the slot back and waits in the reorder budget. So
  a slow sink stops new requests at once, and bodies plus in-order responses in memory
  stay ≤ slots × MaxPayload.
* ``budget`` — bytes of early responses waiting for their turn (``Agent.ReorderBufferMB``);
  at the cap no new request starts until the head of some line completes.
* ``files_reading`` — files whose input is being read and split (each with its read-ahead).
  A file gives its place up once its last body is on its way, so the next file is read
  while the last one's requests are still in flight: with one place per request slot,
  files of one small record each keep every slot busy.
* ``files_open`` — files open at all (each with its upload buffer): those being read plus
  those waiting for their last answers or committing their output.

A file's failure stops that file only: its requests are cancelled and its upload aborted,
so no partial ``.out`` is ever visible; the other files go on. Passing
``Agent.MaxFailedRecords`` stops every file in progress (docs/design.md §2.7).

The module is over 500 lines because the slot, budget and place protocol above is kept in
one class, where each acquire can be read beside its release; a shard (README "Shards of
one big file") runs through the same class, since its assembly and its redo take the same
places and slots (the proof and the joining themselves are in ``agent.pipeline.shards``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent._compat import BytesLike
from agent.aio import race
from agent.coordination.claim import Claim
from agent.coordination.lease import ClaimLost
from agent.dataproc import RecordProcessor, make_processor
from agent.job import JobSettings
from agent.model.client import Invoker, ModelExitedError
from agent.model.replicas import NoReplicaLeft
from agent.pipeline.bodies import BodyReader, UnboundedBody, chain
from agent.pipeline.failures import FailureLimit, Sinks, open_outputs
from agent.pipeline.lines import RecordSpan
from agent.pipeline.ordering import Assembler, ReorderBudget, RequestOrder
from agent.pipeline.outcomes import FileFailed, first_cause, message, settled
from agent.pipeline.requests import Answered, FailedRecord, Held, Requester
from agent.pipeline.settings import PipelineSettings
from agent.pipeline.shards import ShardAssembly, find_start
from agent.report import Progress
from agent.results import COMPLETED, FAILED, LOST, STOPPED, FileOutcome, FileResult
from agent.split import BodyLike, RecordTooLargeError, RecordWalk, SplitError
from agent.storage import InputFile, ObjectInfo, OutputKeyError, Store, Stores

if TYPE_CHECKING:
    from agent.coordination.records import FileRecord

log = logging.getLogger("agent.run")


@dataclass(frozen=True, slots=True)
class _Answer:
    # The model's answer as read (one buffer), or the joined output; Answered when the
    # body was cut (a 413, or failed records isolated).
    data: BytesLike | Answered
    early: bool  # finished before a request ahead of it: holds budget, not a slot

    @property
    def size(self) -> int:
        return self.data.size if isinstance(self.data, Answered) else len(self.data)


class _Place:
    """A place a file holds in a semaphore, given back once however many times it is released."""

    __slots__ = ("_semaphore", "_held")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


class Pipeline:
    """Transforms files with shared request slots and one reorder budget."""

    def __init__(
        self,
        settings: PipelineSettings,
        job: JobSettings,
        stores: Stores,
        client: Invoker,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.job = job
        self.stores = stores
        self.client = client
        self.progress = progress
        self.slots = asyncio.Semaphore(settings.max_inflight)
        self.budget = ReorderBudget(settings.reorder_buffer_bytes)
        self.files_reading = asyncio.Semaphore(settings.files_reading)
        self.files_open = asyncio.Semaphore(settings.files_open)
        self.fatal: str | None = None  # set when no further file can succeed
        # DataProcessing; None when it is all defaults (the plain splitter path).
        self.processor: RecordProcessor | None = make_processor(job)
        self.reader = BodyReader(
            settings.split_type,
            settings.batch_strategy,
            settings.max_payload_bytes,
            settings.gzip,
            self.processor,
            settings.max_records,
            bounds=settings.bounds,
        )
        self.requester = Requester(
            client,
            self.processor,
            split_type=settings.split_type,
            single=settings.batch_strategy == "SingleRecord",
            require_line_per_record=settings.require_line_per_record,
            isolate=settings.max_failed_records is not None,
            placeholder=settings.placeholder,
            max_payload_bytes=settings.max_payload_bytes,
        )
        self.failures = FailureLimit(settings.max_failed_records)
        self.limit_passed = asyncio.Event()  # more records failed than MaxFailedRecords allows
        # Starts a claim that follows another (a sharded file's assembly); set by ``run``.
        self._follow: Callable[[Claim], None] | None = None

    async def run(self, claims: AsyncIterable[Claim], results: list[FileOutcome]) -> None:
        """Transform each file ``claims`` hands out (in its order); one entry each in
        ``results``: its ``FileResult``, replaced by its completion record once written.

        The next claim is asked for only when a file may start, so a lease is never won
        long before its file can be worked on.
        """
        async with asyncio.TaskGroup() as group:

            async def when_room(claim: Claim, result: FileResult, index: int) -> None:
                await self._room()
                await self._file(claim, result, results, index)

            def follow(claim: Claim) -> None:
                result = _result_for(claim)
                results.append(result)
                group.create_task(when_room(claim, result, len(results) - 1))

            self._follow = follow
            await self._room()
            try:
                async for claim in claims:
                    item = claim.item
                    result = _result_for(claim)
                    index = len(results)
                    results.append(result)
                    if self.fatal is not None:
                        result.finish(FAILED, f"{item.uri}: not started: {self.fatal}")
                        self.progress.file_done(result)
                        async with claim:
                            settled(results, index, result, await claim.record(result))
                        continue
                    group.create_task(self._file(claim, result, results, index))
                    await self._room()
            finally:
                self.files_reading.release()  # the room taken for a claim that never came
                self.files_open.release()

    async def _room(self) -> None:
        await self.files_open.acquire()
        await self.files_reading.acquire()

    async def _file(
        self, claim: Claim, result: FileResult, results: list[FileOutcome], index: int
    ) -> None:
        item = claim.item
        reading = _Place(self.files_reading)
        open_ = _Place(self.files_open)
        recorded: FileRecord | None = None
        unproven = False  # a shard whose start may be false failed on its input
        try:
            async with claim:
                try:
                    work = self._transform_file(claim, result, reading)
                    await claim.run(self._unless_limit(work, claim))
                    result.finish(COMPLETED)
                except ClaimLost as lost:  # another instance has the file now: not a failure
                    result.finish(LOST, str(lost))
                except ModelExitedError as error:  # no later file can succeed: start none
                    self.fatal = f"the model command {error.exit.explain()}"
                    result.finish(FAILED, message(item, error))
                except NoReplicaLeft as error:  # likewise
                    self.fatal = str(error)
                    result.finish(FAILED, message(item, error))
                except Exception as error:  # one file's failure leaves the others running
                    result.finish(FAILED, message(item, error))
                    unproven = isinstance(error, SplitError) and _unproven(item)
                # The output is settled and its buffers are gone: the completion record (a
                # small PUT) need not keep another file from starting.
                reading.release()
                open_.release()
                recording = asyncio.ensure_future(claim.record(result))
                try:
                    recorded = await asyncio.shield(recording)
                except asyncio.CancelledError:
                    # A stop while the record is being written: it may land, so finish it
                    # and report what it says (not "stopped" beside a Completed record).
                    recorded = await recording
                    raise
            await self._after(claim, result, recorded)
            if unproven and recorded is not None:
                # Perhaps a false record boundary: the record stands (the file's assembly
                # proves the start, and redoes the shard if it was false), but this
                # instance did not fail: reported as lost to the proof, not as failed.
                result.status = LOST
                result.error = f"{result.error} (its start is proven or redone by the assembly)"
                recorded = None
        except asyncio.CancelledError:
            if recorded is not None:  # stopped after its record (looking for its assembly)
                raise
            if claim.committed and result.status != COMPLETED:  # the stop met the commit
                result.output_etag = claim.output_etag
                result.errors_etag = claim.errors_etag
                result.finish(COMPLETED)
                recorded = await asyncio.shield(claim.record(result))
            else:
                result.finish(STOPPED, f"{item.uri}: stopped before it finished")
            raise
        finally:
            reading.release()
            open_.release()
            self.progress.file_done(result)
            settled(results, index, result, recorded)
            if result.failed_records or result.extra_requests:
                log.warning(
                    "%s: %d record(s) failed alone; cutting its bodies took %d more request(s)",
                    item.uri,
                    result.failed_records,
                    result.extra_requests,
                )

    async def _after(self, claim: Claim, result: FileResult, recorded: FileRecord | None) -> None:
        """What follows a settled unit: a sharded file's shard objects go once its ``.out``
        is recorded; a shard's file is assembled here when its last shard settled."""
        if recorded is None:
            return
        item = claim.item
        if claim.shards is not None and result.status == COMPLETED:
            await claim.coordinator.shards_assembled(item.id)
        elif item.shard is not None and self.fatal is None:
            assembly = await claim.coordinator.after_shard(item)
            if assembly is not None and self._follow is not None:
                self._follow(assembly)

    async def _unless_limit(self, work: Awaitable[None], claim: Claim) -> None:
        """Await ``work``; once MaxFailedRecords is passed, stop it: its file fails, unless
        the stop met its commit (then the commit was finished: the file is complete)."""
        if self.failures.limit is None:
            return await work
        task = await race(work, self.limit_passed)
        if task.cancelled() and self.limit_passed.is_set():
            if claim.committed:
                return None
            raise FileFailed(f"stopped: {self.fatal}")
        return task.result()

    def _count_failed(self, failed: list[FailedRecord]) -> None:
        reason = self.failures.add(failed)
        if reason is not None:
            self.fatal = reason
            log.error("%s; the files in progress fail and no other starts", reason)
            self.limit_passed.set()

    async def _transform_file(self, claim: Claim, result: FileResult, reading: _Place) -> None:
        item, out = claim.item, claim.output
        if item.problem is not None:  # refused when the listing was taken
            raise FileFailed(item.problem)
        if item.info is None:
            raise FileFailed(item.missing_message())
        if out is None:  # the output name was refused when the listing was opened: say why
            raise OutputKeyError(item.output_error or "its output name is refused")
        s = self.settings
        bound = s.max_payload_bytes
        filtered = self.processor is not None and self.processor.filters_input
        if s.split_type == "None" and not s.gzip and not filtered and 0 < bound < item.info.size:
            raise RecordTooLargeError(
                0,
                f"the object is {item.info.size} bytes, over the {bound}-byte bound "
                f"(MaxPayloadInMB={bound >> 20}); raise MaxPayloadInMB or split the input",
                item.info.size,
                bound,
            )
        if claim.shards is not None:  # a sharded file: its .out is joined from its shards
            assembly = ShardAssembly(claim, result, self.stores, self._redo, s.kms_key_id)
            await assembly.run()
            return
        source = await self.stores.get(item.uri)
        sink = await self.stores.get(out)
        upload, errors = open_outputs(sink, claim, s.kms_key_id)
        async with upload, errors:
            sinks = Sinks(Assembler(upload.write, s.assemble_with), errors, result)
            await self._transform(item, item.info, source, sinks, result, reading)
            if self.limit_passed.is_set():  # perhaps by this file's own failed records
                raise FileFailed(f"not committed: {self.fatal}")
            try:
                result.output_etag = await claim.commit(upload, errors.written())
            finally:
                # Also when a stop met the commit: the commit was finished and the file is
                # recorded as completed, with its true size.
                if claim.committed:
                    result.output_etag = claim.output_etag
                    result.output_bytes = sinks.assembler.bytes_written
                    result.errors_etag = claim.errors_etag

    async def _redo(self, claim: Claim) -> FileRecord | None:
        """A shard done again inside its file's assembly (``ShardAssembly.proven``): its
        new record, Completed or Failed."""
        item = claim.item
        result = _result_for(claim)
        async with claim:
            try:
                await self._transform_file(claim, result, _Place(asyncio.Semaphore(1)))
                result.finish(COMPLETED)
            except ClaimLost:
                raise  # another instance assembles the file too and was first: it goes on
            except Exception as error:
                result.finish(FAILED, message(item, error))
            return await claim.record(result)

    async def _transform(
        self,
        item: InputFile,
        info: ObjectInfo,
        source: Store,
        sinks: Sinks,
        result: FileResult,
        reading: _Place,
    ) -> None:
        shard = item.shard
        if shard is None:
            await self._transform_from(item, info, source, sinks, result, reading, 0, None)
            return
        # A shard: the records that start in [first boundary at or after start, end).
        begin = shard.begin
        if begin is None:
            begin = 0
            if shard.index:
                s = self.settings
                begin = await find_start(
                    s.split_type, info, source, shard.start, s.max_payload_bytes
                )
        result.first_record_at = result.input_bytes = begin
        walk = RecordWalk(self.settings.split_type, begin, shard.end)
        await self._transform_from(item, info, source, sinks, result, reading, begin, walk)
        result.last_record_end = walk.finish()
        result.input_bytes = result.last_record_end - begin

    async def _transform_from(
        self,
        item: InputFile,
        info: ObjectInfo,
        source: Store,
        sinks: Sinks,
        result: FileResult,
        reading: _Place,
        begin: int,
        walk: RecordWalk | None,
    ) -> None:
        bodies_from = self.reader.bodies(info, source, begin, walk)
        async with contextlib.aclosing(bodies_from) as bodies:
            ahead: list[BodyLike] = []
            body = await anext(bodies, None)
            if body is not None and self._whole_file(body, info):
                ahead.append(body)
                if (body := await anext(bodies, None)) is None:  # the file's only body
                    reading.release()
                    await self._transform_alone(item, ahead[0], sinks, result)
                    return
            if body is not None:
                ahead.append(body)
            await self._transform_many(item, info, source, ahead, bodies, sinks, result, reading)

    def _whole_file(self, body: BodyLike, info: ObjectInfo) -> bool:
        """Whether ``body`` is a whole body that reaches the end of the (uncompressed) input."""
        return body.first and body.last and body.end == info.size and not self.settings.gzip

    async def _transform_alone(
        self, item: InputFile, body: BodyLike, sinks: Sinks, result: FileResult
    ) -> None:
        """A file of one body (most small files): its request awaited here, with no writer
        task, queue or task group, and its slot given back once the answer is written."""
        await self.budget.wait_for_room()
        await self.slots.acquire()
        result.requests += 1
        try:
            try:
                answer = await self._answer(Held(str(item.uri), body, 0), result)
                await sinks.put(answer)
            finally:
                self.slots.release()
        finally:
            result.records += body.records
            self.progress.advance(body.records, body.end - result.input_bytes)
            result.input_bytes = body.end

    async def _transform_many(
        self,
        item: InputFile,
        info: ObjectInfo,
        source: Store,
        ahead: list[BodyLike],
        rest: AsyncIterator[BodyLike],
        sinks: Sinks,
        result: FileResult,
        reading: _Place,
    ) -> None:
        order: asyncio.Queue[asyncio.Task[_Answer] | None] = asyncio.Queue()
        line = RequestOrder()
        s = self.settings
        uri = str(item.uri)
        try:
            async with (
                contextlib.aclosing(chain(ahead, rest)) as chained,
                asyncio.TaskGroup() as group,
            ):
                group.create_task(self._write(order, sinks))
                streamed: UnboundedBody | None = None
                span: RecordSpan | None = None  # a streamed body's records, for the line rule
                async for body in chained:
                    if body.first:
                        await self.budget.wait_for_room()
                        await self.slots.acquire()
                        work: Callable[[], Awaitable[BytesLike | Answered]]
                        if body.last:
                            # The records of the bodies before this one are counted: the
                            # loop adds a body's records at its last part, before the next.
                            held = Held(uri, body, result.records)
                            work = functools.partial(self._answer, held, result)
                        else:
                            stop = None if item.shard is None else item.shard.end
                            reopen = functools.partial(
                                self.reader.reread, info, source, body.start, stop
                            )
                            streamed = UnboundedBody(reopen)
                            if s.require_line_per_record:
                                span = RecordSpan(uri, result.records, body.start)
                            what = f"{uri} body from byte {body.start}"
                            work = functools.partial(self.requester.streamed, streamed, what, span)
                        task = group.create_task(self._request(work, line, line.issue()))
                        task.add_done_callback(self._free_slot_if_failed)
                        order.put_nowait(task)
                        result.requests += 1
                    if streamed is not None:
                        if body.data:
                            await streamed.put(body.data)
                        if body.last:
                            await streamed.close()
                            streamed = None
                    if body.last:
                        if span is not None:
                            span.close(body.records, body.end)
                            span = None
                        result.records += body.records
                        self.progress.advance(body.records, body.end - result.input_bytes)
                        result.input_bytes = body.end
                order.put_nowait(None)
                reading.release()  # read to its end: the next file may start reading
        except BaseExceptionGroup as group_error:
            raise first_cause(group_error) from None
        finally:
            await self._drop_waiting(order)

    async def _answer(self, held: Held, result: FileResult) -> BytesLike | Answered:
        """A whole body's answer; the failed records it held are counted at once."""
        answer = await self.requester.answer(held)
        if isinstance(answer, Answered):
            result.requests += answer.requests
            result.extra_requests += answer.requests
            if answer.failed:
                self._count_failed(answer.failed)
        return answer

    async def _request(
        self, work: Callable[[], Awaitable[BytesLike | Answered]], line: RequestOrder, seq: int
    ) -> _Answer:
        """A body's request, started by the task (a task cancelled before its first step
        never makes the coroutine)."""
        answer = _Answer(await work(), False)
        if not line.finish(seq):  # early: wait in the budget, not in a slot
            answer = _Answer(answer.data, True)
            self.slots.release()
            self.budget.hold(answer.size)
        return answer

    def _free_slot_if_failed(self, task: asyncio.Task[_Answer]) -> None:
        """A request that failed or was cancelled gives its slot back.

        A done callback, not a ``finally`` in ``_request``: a task cancelled before its
        first step (its file failed meanwhile) never runs its body, and a slot it kept
        would be lost to every other file for good.
        """
        if task.cancelled() or task.exception() is not None:
            self.slots.release()

    async def _settle(self, answer: _Answer) -> None:
        """An answer was written or dropped: give back its slot or its budget."""
        if answer.early:
            await self.budget.release(answer.size)
        else:
            self.slots.release()

    async def _write(
        self, order: asyncio.Queue[asyncio.Task[_Answer] | None], sinks: Sinks
    ) -> None:
        while (task := await order.get()) is not None:
            answer = await task
            try:
                await sinks.put(answer.data)
            finally:
                await self._settle(answer)

    async def _drop_waiting(self, order: asyncio.Queue[asyncio.Task[_Answer] | None]) -> None:
        """Give back what answers a failed or stopped file will never write still hold."""
        while not order.empty():
            task = order.get_nowait()
            if task is not None and task.done() and not task.cancelled():
                if task.exception() is None:
                    await self._settle(task.result())


def _unproven(item: InputFile) -> bool:
    """Whether ``item`` is a shard whose first record boundary was found, not known."""
    return item.shard is not None and item.shard.index > 0 and item.shard.begin is None


def _result_for(claim: Claim) -> FileResult:
    """A new result for ``claim``'s unit: a whole file, a shard, or a sharded file's
    assembly (the summary counts each kind apart)."""
    item = claim.item
    result = FileResult(str(item.uri), str(claim.output or item.uri))
    result.shard = None if item.shard is None else item.shard.name
    result.shards = 0 if claim.shards is None else len(claim.shards)
    return result
