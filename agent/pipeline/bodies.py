"""A file's request bodies: its (uncompressed) bytes read from the store and cut into
bodies by the splitter, or by DataProcessing's batcher.

Read-ahead is one chunk of the store's reader plus what the splitter holds back (at most
one body): the reader waits for the pipeline, never the other way round. A body with no
bound (``MaxPayloadInMB = 0``) goes to the model as an :class:`UnboundedBody`, streamed as
it is cut, and re-read from the source for a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Protocol

from agent.codec.gzip import gunzip
from agent.dataproc import Batch, RecordBatcher, RecordProcessor
from agent.split import Body, BodyLike, RecordWalk, make_splitter
from agent.storage import ObjectInfo, Store


class _Cutter(Protocol):
    """A splitter, or DataProcessing's batcher: chunks in, bodies out."""

    def feed(self, chunk: bytes) -> Sequence[BodyLike]: ...
    def finish(self) -> Sequence[BodyLike]: ...


class BodyReader:
    """Bodies of one kind of input (split type, batching, gzip, DataProcessing), read from
    any offset of any file."""

    def __init__(
        self,
        split_type: str,
        batch_strategy: str,
        max_payload_bytes: int,
        gzip: bool,
        processor: RecordProcessor | None,
        max_records: int = 0,
        bounds: bool = False,
    ) -> None:
        self.split_type = split_type
        self.batch_strategy = batch_strategy
        self.max_payload_bytes = max_payload_bytes
        self.max_records = max_records  # Agent.MaxRecordsPerRequest; 0: no cap
        self.bounds = bounds  # bodies carry their record ends (``Body.bounds``)
        self.gzip = gzip
        self.processor = processor

    async def chunks(
        self, info: ObjectInfo, source: Store, start: int, walk: RecordWalk | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The input's (uncompressed) bytes from offset ``start``; with ``walk`` (a shard,
        README "Shards") only up to the record boundary where the walk stops."""
        if walk is not None:
            async with source.read(info, start) as reader:
                async for chunk in reader:
                    cut = walk.feed(chunk)
                    if cut is None:
                        yield chunk
                        continue
                    if cut:
                        yield chunk[:cut]
                    return
            return
        if not self.gzip:
            async with source.read(info, start) as reader:
                async for chunk in reader:
                    yield chunk
            return
        skip = start
        async with source.read(info) as reader:
            async for chunk in gunzip(reader):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                yield chunk[skip:] if skip else chunk
                skip = 0

    async def bodies(
        self, info: ObjectInfo, source: Store, start: int, walk: RecordWalk | None = None
    ) -> AsyncGenerator[BodyLike, None]:
        """The bodies of the input from offset ``start`` (a body's first byte), their
        offsets in the whole input; with ``walk``, those of one shard (``chunks``)."""
        splitter: _Cutter
        if self.processor is not None:
            splitter = RecordBatcher(
                self.processor,
                self.batch_strategy,
                self.max_payload_bytes,
                max_records=self.max_records,
                bounds=self.bounds,
            )
        else:
            splitter = make_splitter(
                self.split_type,
                self.batch_strategy,
                self.max_payload_bytes,
                self.max_records,
                bounds=self.bounds,
            )
        async with contextlib.aclosing(self.chunks(info, source, start, walk)) as chunks:
            async for chunk in chunks:
                for body in splitter.feed(chunk):
                    yield _shifted(body, start)
        for body in splitter.finish():
            yield _shifted(body, start)

    async def reread(
        self, info: ObjectInfo, source: Store, start: int, stop: int | None = None
    ) -> AsyncIterator[bytes]:
        """An unbounded body again, for a retry: its bytes re-read from the source (in a
        shard, only up to the record boundary at or after ``stop``)."""
        walk = None if stop is None else RecordWalk(self.split_type, start, stop)
        async with contextlib.aclosing(self.bodies(info, source, start, walk)) as parts:
            async for part in parts:
                if part.data:
                    yield bytes(part.data)
                if part.last:
                    return


def _shifted(body: BodyLike, by: int) -> BodyLike:
    """``body`` with its offsets moved ``by`` bytes on: the splitter counts from where it
    began reading, the pipeline from the start of the input."""
    if not by:
        return body
    if isinstance(body, Batch):
        return Batch(
            body.data,
            body.inputs,
            body.start + by,
            body.end + by,
            body.records,
            body.bounds,
            body.input_bounds,
        )
    return Body(
        body.data, body.start + by, body.end + by, body.records, body.first, body.last, body.bounds
    )


class UnboundedBody:
    """One unbounded body (MaxPayloadInMB = 0), a body source for ``ModelClient.invoke``.

    The first attempt streams the parts the splitter cuts as they come; a retry calls
    ``reopen``, which reads the body's bytes again from the source. Parts are handed over
    through a small queue, so the reader waits for the model, not the other way round.
    """

    def __init__(self, reopen: Callable[[], AsyncIterator[bytes]]) -> None:
        self._reopen = reopen
        self._queue: asyncio.Queue[bytes | memoryview | None] = asyncio.Queue(maxsize=4)
        self._listening = True
        self._calls = 0

    async def put(self, data: bytes | memoryview) -> None:
        if self._listening:
            await self._queue.put(data)

    async def close(self) -> None:
        if self._listening:
            await self._queue.put(None)

    def __call__(self) -> AsyncIterator[bytes]:
        self._calls += 1
        if self._calls == 1:
            return self._live()
        self._abandon()  # a retry: the live parts are of no use any more
        return self._reopen()

    async def _live(self) -> AsyncIterator[bytes]:
        try:
            while (data := await self._queue.get()) is not None:
                yield bytes(data) if isinstance(data, memoryview) else data
        finally:
            self._abandon()

    def _abandon(self) -> None:
        self._listening = False
        while not self._queue.empty():
            self._queue.get_nowait()


async def chain(
    ahead: list[BodyLike], rest: AsyncIterator[BodyLike]
) -> AsyncGenerator[BodyLike, None]:
    """The bodies already taken from ``rest``, then ``rest``."""
    for body in ahead:
        yield body
    async for body in rest:
        yield body
