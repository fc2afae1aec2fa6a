"""Streamed S3 outputs: one PutObject when small, else a multipart upload with bounded parts.

Nothing is visible under the key before ``commit``: a multipart upload is completed only
then, and aborted on any failure (see :class:`~agent.storage.Upload`). The part size
follows :func:`~agent.storage.part_size`; ``on_upload_id`` hears of the upload before
CreateMultipartUpload is sent (``None``) and of its UploadId before the first part is, so
a crash at any moment leaves a record to clean up from. A stop during
CreateMultipartUpload waits for its answer, so the upload it made is aborted too.

The upload sends its requests through :class:`~agent.storage.s3.call.BucketCalls` (the
client, the bucket and the retried call); it knows nothing of the store that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import Any

from agent._compat import BytesLike
from agent.storage.base import (
    MAX_PARTS,
    StorageError,
    Upload,
    UploadIdCallback,
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


class S3Upload(Upload):
    """A streamed output: one PutObject if it fits in the first part, else multipart.

    ``write`` copies into the current part buffer (one copy, whatever the caller holds);
    a full buffer becomes a part upload once more data arrives, so an output of exactly
    one part size is still one PutObject. Memory: at most ``max_parts_in_flight`` parts
    uploading plus the one filling.
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

    async def _ship(self) -> None:
        """Start uploading the buffer as the next part (waiting for a free slot)."""
        if self.upload_id is None:
            await self._create()
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(f"{self.uri} needs more than {MAX_PARTS} parts; it is too large")
        body, self._buffer = self._buffer, io.BytesIO()
        self._next_part += 1
        await self._slots.acquire()
        self._raise_failure()
        task = asyncio.get_running_loop().create_task(self._upload_part(number, body))
        self._tasks.add(task)
        task.add_done_callback(self._part_done)

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
