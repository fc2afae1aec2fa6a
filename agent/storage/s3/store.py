"""One S3 bucket behind the :class:`~agent.storage.Store` interface (aiobotocore).

Every call is retried on transient errors (connection errors, timeouts, 5xx, throttling)
with backoff for up to ``StorageSettings.retry_seconds`` without progress, on top of
botocore's own few quick retries (:mod:`agent.storage.s3.call`). Reads ask for ranges of
at most ``range_bytes``, each with ``If-Match`` on the listed ETag: a read that breaks
resumes from the last byte received, and an object replaced mid-read fails with
:class:`ObjectChangedError` instead of mixing two versions. Uploads stream: one PutObject
when the output fits in the first part, else a multipart upload with at most
``max_parts_in_flight`` parts in flight (:mod:`agent.storage.s3.upload`).
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from agent._compat import BytesLike
from agent.errors import BtAgentError
from agent.storage.base import (
    ChunkReader,
    ObjectChangedError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PendingUpload,
    StorageError,
    StorageSettings,
    UploadIdCallback,
)
from agent.storage.s3.call import (
    TRANSIENT_ERRORS,
    BucketCalls,
    Retries,
    error_status,
    is_transient,
)
from agent.storage.s3.upload import S3Upload, abort_upload, conditions


class _ShortRead(BtAgentError, ConnectionError):
    """The body ended before the range did (the server went away between two packets)."""


class S3Store:
    """Objects of one bucket; ``client`` is an open aiobotocore S3 client (shared)."""

    def __init__(self, client: Any, bucket: str, settings: StorageSettings) -> None:
        self.client = client
        self.bucket = bucket
        self.settings = settings
        self.calls = BucketCalls(client, bucket, settings)

    def uri(self, key: str) -> str:
        return self.calls.uri(key)

    async def call(self, what: str, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        """``await method(**params)`` with this store's retries (:meth:`BucketCalls.call`)."""
        return await self.calls.call(what, method, **params)

    # ------------------------------------------------------------------------- listing

    async def list_objects(self, prefix: str, *, exclude: Sequence[str] = ()) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self.call(
                f"listing {self.uri(prefix)}", self.client.list_objects_v2, **params
            )
            for item in page.get("Contents", ()):
                key, size = item["Key"], int(item["Size"])
                if (size == 0 and key.endswith("/")) or any(key.startswith(x) for x in exclude):
                    continue  # a folder marker, or our own output or state
                found.append(ObjectInfo(key, size, item["ETag"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            params["ContinuationToken"] = token
        found.sort(key=lambda info: info.key)
        return found

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            head = await self.call(
                f"looking up {self.uri(key)}", self.client.head_object, Bucket=self.bucket, Key=key
            )
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, int(head["ContentLength"]), head["ETag"])

    # ------------------------------------------------------------------------- reads

    def read(self, obj: ObjectInfo, start: int = 0, end: int | None = None) -> ChunkReader:
        stop = obj.size if end is None else end
        return ChunkReader(lambda: self._produce(obj, start, stop), self.settings.read_ahead_bytes)

    def _changed(self, obj: ObjectInfo, position: int, how: str) -> ObjectChangedError:
        return ObjectChangedError(
            f"{self.uri(obj.key)} {how} after it was listed (at byte {position} of {obj.size}; "
            f"listed ETag {obj.etag}); its output was not written — rerun the job once the "
            "input stays unchanged"
        )

    async def _open_range(self, obj: ObjectInfo, start: int, stop: int) -> Any:
        try:
            response = await self.client.get_object(
                Bucket=self.bucket, Key=obj.key, Range=f"bytes={start}-{stop - 1}", IfMatch=obj.etag
            )
        except ClientError as error:
            status, code, _ = error_status(error)
            if status == 412 or code == "PreconditionFailed":
                raise self._changed(obj, start, "changed") from None
            if code in ("NoSuchKey", "404"):
                raise self._changed(obj, start, "was deleted") from None
            if status == 416 or code == "InvalidRange":
                raise self._changed(obj, start, "shrank") from None
            raise
        if response.get("ETag", obj.etag) != obj.etag:  # a store that ignores If-Match
            response["Body"].close()
            raise self._changed(obj, start, "changed")
        return response["Body"]

    async def _produce(self, obj: ObjectInfo, start: int, end: int) -> AsyncGenerator[bytes, None]:
        position = start
        retries = Retries(self.settings, "")
        chunk_bytes = self.settings.read_chunk_bytes
        while position < end:
            stop = min(end, position + self.settings.range_bytes)
            retries.what = f"reading {self.uri(obj.key)} at byte {position} of {obj.size}"
            try:
                body = await self._open_range(obj, position, stop)
            except StorageError:  # ObjectChangedError: final, and already a sentence
                raise
            except Exception as error:
                if not is_transient(error):
                    raise self.calls.error(retries.what, error) from error
                await retries.wait(error)
                continue
            try:
                # Each piece is handed on as it arrives (at most ``chunk_bytes``): joining
                # pieces into bigger chunks would copy every byte once more.
                while position < stop:
                    broken: BaseException
                    try:
                        piece = await body.read(min(chunk_bytes, stop - position))
                    except TRANSIENT_ERRORS as error:
                        broken = error
                    else:
                        if piece:
                            position += len(piece)
                            retries.progress()
                            yield piece
                            continue
                        broken = _ShortRead("the connection ended before the requested range")
                    retries.what = f"reading {self.uri(obj.key)} at byte {position} of {obj.size}"
                    await retries.wait(broken)
                    break  # resume from ``position`` with a new ranged GET
            finally:
                body.close()

    # ------------------------------------------------------------------------- uploads

    def open_upload(
        self,
        key: str,
        *,
        kms_key_id: str | None = None,
        metadata: dict[str, str] | None = None,
        content_type: str | None = None,
        on_upload_id: UploadIdCallback | None = None,
    ) -> S3Upload:
        extra: dict[str, Any] = {}
        if kms_key_id:
            extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)
        if metadata:
            extra["Metadata"] = dict(metadata)
        if content_type:
            extra["ContentType"] = content_type
        return S3Upload(self.calls, key, extra, on_upload_id)

    # ------------------------------------------------------------------------- small objects

    async def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        what = f"reading {self.uri(key)}"
        retries = Retries(self.settings, what)
        while True:
            try:
                response = await self.call(
                    what, self.client.get_object, Bucket=self.bucket, Key=key
                )
            except ObjectNotFoundError:
                return None
            if int(response["ContentLength"]) > self.settings.max_small_object_bytes:
                response["Body"].close()
                raise ObjectTooLargeError(
                    f"{self.uri(key)} is {response['ContentLength']} bytes, more than the "
                    f"{self.settings.max_small_object_bytes} bytes allowed here"
                )
            try:
                async with response["Body"] as body:
                    return await body.read(), str(response["ETag"])
            except TRANSIENT_ERRORS as error:
                await retries.wait(error)

    async def put_bytes(
        self, key: str, data: BytesLike, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        params = conditions(if_none_match, if_match)
        response = await self.call(
            f"writing {self.uri(key)}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=io.BytesIO(data),
            **params,
        )
        return str(response["ETag"])

    async def delete(self, key: str) -> None:
        await self.call(
            f"deleting {self.uri(key)}", self.client.delete_object, Bucket=self.bucket, Key=key
        )

    async def list_multipart_uploads(self, prefix: str) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self.call(
                f"listing the uploads under {self.uri(prefix)}",
                self.client.list_multipart_uploads,
                **params,
            )
            found += [
                PendingUpload(item["Key"], item["UploadId"]) for item in page.get("Uploads", ())
            ]
            if not page.get("IsTruncated"):
                return found
            params.update(
                KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"]
            )

    async def open_uploads(
        self, keys: Iterable[str], *, under: str | None = None
    ) -> list[PendingUpload]:
        """The open multipart uploads of ``keys``, from one listing (one request per thousand
        uploads open there): of ``under``, else of the keys' common prefix."""
        if under is None:
            wanted = set(keys)
            if not wanted:
                return []
            prefix = os.path.commonprefix(list(wanted))
            return [u for u in await self.list_multipart_uploads(prefix) if u.key in wanted]
        by_key: dict[str, list[PendingUpload]] = {}
        for upload in await self.list_multipart_uploads(under):
            by_key.setdefault(upload.key, []).append(upload)
        chosen: list[PendingUpload] = []
        for key in keys if by_key else ():
            chosen += by_key.pop(key, [])
        return chosen

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        await abort_upload(self.calls, key, upload_id)
