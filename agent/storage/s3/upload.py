"""Streamed S3 outputs: one PutObject when small, else a multipart upload with bounded parts.

Nothing is visible under the key before ``commit``: a multipart upload is completed only
then, and aborted on any failure (see :class:`~agent.storage.Upload`). The part size
follows :func:`~agent.storage.part_size`; ``on_upload_id`` hears of the upload before
CreateMultipartUpload is sent (``None``) and of its UploadId before the first part is, so
a crash at any moment leaves a record to clean up from. A stop during
CreateMultipartUpload waits for its answer, so the upload it made is aborted too.

The upload sends its requests through :class:`~agent.storage.s3.call.BucketCalls` (the
client, the bucket and the retried call); it knows nothing of the store that opened it.

``append`` adds a stored object: server-side (UploadPartCopy, ``CopySourceIfMatch`` on its
ETag) when the object is in a bucket of the same client and is large enough to be a part of
its own, streamed through the upload's buffer otherwise (:func:`plan_append` decides;
docs/design.md §1.9).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent._compat import BytesLike
from agent.storage.base import (
    MAX_PARTS,
    ObjectInfo,
    ObjectNotFoundError,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    Store,
    Upload,
    UploadIdCallback,
    changed_before_append,
    min_part_size,
    part_size,
)
from agent.storage.s3.call import BucketCalls

log = logging.getLogger("agent.storage")


def conditions(if_none_match: bool, if_match: str | None) -> dict[str, str]:
    """The request parameters of a conditional write."""
    params: dict[str, str] = {}
    if if_none_match:
        params["IfNoneMatch"] = "*"
    if if_match is not None:
        params["IfMatch"] = if_match
    return params


async def abort_upload(calls: BucketCalls, key: str, upload_id: str) -> None:
    """AbortMultipartUpload; an upload that is already gone is not an error."""
    try:
        await calls.call(
            f"aborting the upload {upload_id} of {calls.uri(key)}",
            calls.client.abort_multipart_upload,
            Bucket=calls.bucket,
            Key=key,
            UploadId=upload_id,
        )
    except StorageError as error:
        if "NoSuchUpload" not in str(error):
            raise


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """How an object joins an upload: its first ``stream`` bytes through the buffer, then
    each of ``copies`` (``(start, end)``, end exclusive) as a part copied server-side."""

    stream: int
    copies: tuple[tuple[int, int], ...] = ()


def plan_append(size: int, pending: int, next_part: int, settings: StorageSettings) -> AppendPlan:
    """How to append an object of ``size`` bytes to an upload that holds ``pending`` bytes
    not yet shipped, which will go out as part ``next_part``.

    Every part but the last must keep S3's minimum (:func:`~agent.storage.min_part_size`),
    and it is not known which part is the last, so a part is copied only when it is that
    large, and the buffer is shipped before it only when it is that large too:

    - nothing pending, or at least the minimum: the object is copied whole, in parts of at
      most ``copy_part_bytes`` (balanced: all within a byte of each other);
    - less than the minimum pending: the object's first bytes fill the buffer up to the
      minimum (read, at most 5 MiB), the rest is copied, when the rest is large enough;
    - otherwise (a small object, a small rest) the object is streamed: small neighbours are
      joined before upload.
    """
    if pending and pending < min_part_size(next_part):
        head = min(size, min_part_size(next_part) - pending)
    else:
        head = 0
    first = next_part + 1 if pending or head else next_part
    rest = size - head
    count = -(-rest // settings.copy_part_bytes)  # ceiling
    last = first + count - 1
    if rest <= 0 or last > MAX_PARTS or rest // count < min_part_size(last):
        return AppendPlan(stream=size)
    piece, extra = divmod(rest, count)
    copies: list[tuple[int, int]] = []
    start = head
    for index in range(count):
        end = start + piece + (index < extra)
        copies.append((start, end))
        start = end
    return AppendPlan(stream=head, copies=tuple(copies))


def source_calls(source: Store, calls: BucketCalls) -> BucketCalls | None:
    """The source store's bucket, when S3 can copy from it into ``calls``'s bucket: an S3
    store (its :class:`BucketCalls`) on the same client, so the same endpoint and
    credentials, in any bucket."""
    theirs = getattr(source, "calls", None)
    if isinstance(theirs, BucketCalls) and theirs.client is calls.client:
        return theirs
    return None


class S3Upload(Upload):
    """A streamed output: one PutObject if it fits in the first part, else multipart.

    ``write`` copies into the current part buffer (one copy, whatever the caller holds);
    a full buffer becomes a part upload once more data arrives, so an output of exactly
    one part size is still one PutObject. Memory: at most ``max_parts_in_flight`` parts
    uploading plus the one filling. Copied parts (:meth:`append`) hold no bytes here but
    take a slot like any part.
    """

    def __init__(
        self,
        calls: BucketCalls,
        key: str,
        extra: dict[str, Any],
        on_upload_id: UploadIdCallback | None,
    ) -> None:
        super().__init__(key)
        self.calls = calls
        self._extra = extra
        self._on_upload_id = on_upload_id
        # Bodies are BytesIO, not bytes: aiohttp streams file objects in chunks but warns
        # about (and, in strict test runs, refuses) raw bodies above 1 MiB.
        self._buffer = io.BytesIO()
        self._next_part = 1
        self._parts: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(calls.settings.max_parts_in_flight)
        self._failure: BaseException | None = None

    @property
    def uri(self) -> str:
        return self.calls.uri(self.key)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def write(self, data: BytesLike) -> None:
        self._check_open()
        self._raise_failure()
        view = memoryview(data).cast("B")
        self.bytes_written += len(view)
        while view:
            limit = part_size(self.calls.settings, self._next_part)
            room = limit - self._buffer.tell()
            if room <= 0:
                await self._ship()
                continue
            self._buffer.write(view[:room])
            view = view[room:]

    async def append(self, source: Store, info: ObjectInfo) -> None:
        """Append the object ``info`` of ``source``: copied server-side where
        :func:`plan_append` allows and ``source`` is a bucket of this client, else streamed.

        A copy is a part upload like any other (it takes a slot, its failure is raised by the
        next call); a copy refused because the object changed or vanished since ``info``
        was read raises :class:`ObjectChangedError` naming the object and this upload.
        """
        self._check_open()
        self._raise_failure()
        origin = source_calls(source, self.calls)
        if origin is None:
            await self._stream(source, info, 0, info.size)
            return
        plan = plan_append(info.size, self._buffer.tell(), self._next_part, self.calls.settings)
        await self._stream(source, info, 0, plan.stream)
        if not plan.copies:
            return
        if self._buffer.tell():
            await self._ship()
        whole = plan.copies == ((0, info.size),)
        for start, end in plan.copies:
            number = await self._number()
            self.bytes_written += end - start
            span = None if whole else (start, end)
            await self._start(functools.partial(self._copy_part, number, origin, info, span))

    async def _number(self) -> int:
        """The next part's number, the multipart upload begun first if it was not."""
        if self.upload_id is None:
            await self._create()
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(f"{self.uri} needs more than {MAX_PARTS} parts; it is too large")
        self._next_part += 1
        return number

    async def _start(self, part: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``part()`` as a part upload once a slot is free."""
        await self._slots.acquire()
        self._raise_failure()
        task = asyncio.get_running_loop().create_task(part())
        self._tasks.add(task)
        task.add_done_callback(self._part_done)

    async def _ship(self) -> None:
        """Start uploading the buffer as the next part (waiting for a free slot)."""
        number = await self._number()
        body, self._buffer = self._buffer, io.BytesIO()
        await self._start(lambda: self._upload_part(number, body))

    async def _create(self) -> None:
        """CreateMultipartUpload, its intent recorded first and its UploadId learnt even
        when a stop comes during the call (leaving the upload's context then aborts it)."""
        if self._on_upload_id is not None:
            await self._on_upload_id(None)
        creating = asyncio.ensure_future(
            self.calls.call(
                f"starting the upload of {self.uri}",
                self.calls.client.create_multipart_upload,
                Bucket=self.calls.bucket,
                Key=self.key,
                **self._extra,
            )
        )
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # S3 may have begun the upload already: wait for its answer, so that the
            # upload is aborted on the way out. A second stop gives up waiting; the
            # upload is then found by its key when the file is next worked on.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                self.upload_id = str((await asyncio.shield(creating))["UploadId"])
            raise
        self.upload_id = str(created["UploadId"])
        if self._on_upload_id is not None:
            await self._on_upload_id(self.upload_id)

    def _part_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _upload_part(self, number: int, body: io.BytesIO) -> None:
        response = await self.calls.call(
            f"uploading part {number} of {self.uri}",
            self.calls.client.upload_part,
            Bucket=self.calls.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    async def _copy_part(
        self, number: int, origin: BucketCalls, info: ObjectInfo, span: tuple[int, int] | None
    ) -> None:
        """UploadPartCopy of ``info`` (bytes ``span``, else whole) as part ``number``, only
        from the version with ``info``'s ETag."""
        source = origin.uri(info.key)
        params: dict[str, Any] = {}
        what = f"copying {source} into part {number} of {self.uri}"
        if span is not None:
            first, last = span[0], span[1] - 1
            params["CopySourceRange"] = f"bytes={first}-{last}"
            what = f"copying bytes {first}-{last} of {source} into part {number} of {self.uri}"
        try:
            response = await self.calls.call(
                what,
                self.calls.client.upload_part_copy,
                Bucket=self.calls.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                CopySource={"Bucket": origin.bucket, "Key": info.key},
                CopySourceIfMatch=info.etag,
                **params,
            )
        except (PreconditionFailed, ObjectNotFoundError) as error:
            how = "changed" if isinstance(error, PreconditionFailed) else "was deleted"
            raise changed_before_append(source, how, info, self.uri) from error
        self._parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})

    async def commit(self, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        self._check_open()
        self._raise_failure()
        condition = conditions(if_none_match, if_match)
        if self.upload_id is None:
            response = await self.calls.call(
                f"writing {self.uri}",
                self.calls.client.put_object,
                Bucket=self.calls.bucket,
                Key=self.key,
                Body=self._buffer,
                **self._extra,
                **condition,
            )
        else:
            if self._buffer.tell():
                await self._ship()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._raise_failure()
            parts = sorted(self._parts, key=lambda part: int(part["PartNumber"]))
            response = await self.calls.call(
                f"completing the upload of {self.uri}",
                self.calls.client.complete_multipart_upload,
                Bucket=self.calls.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        self.committed = True
        self._buffer = io.BytesIO()
        return str(response["ETag"])

    async def abort(self) -> None:
        if self.committed or self.aborted:
            return
        self.aborted = True
        self._buffer = io.BytesIO()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upload_id is None:
            return
        try:
            await abort_upload(self.calls, self.key, self.upload_id)
        except StorageError as error:
            log.warning(
                "could not abort the multipart upload %s of %s (%s); it stays invisible, "
                "but its parts are billed until an abort or a lifecycle rule removes them",
                self.upload_id,
                self.uri,
                error,
            )
