"""What both storage backends share: settings, errors, the object record, read-ahead, uploads.

The backends (``s3/``, ``local/``) implement :class:`Store`; callers never need to
know which one they hold. Everything that can wait on the network or the disk is async;
everything that holds bytes is bounded by a field of :class:`StorageSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from agent._compat import MIB, BytesLike
from agent.errors import BtAgentError, UsageError

GIB = 1 << 30
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
MAX_PART_BYTES = 5 * GIB  # S3's limit on one part (a copied part included)
MIN_PART_BYTES = 5 * MIB  # S3's minimum size of every part but the last
PARTS_PER_SIZE_STEP = 1_000  # the part size doubles after this many parts
TEMP_MARKER = ".bt-agent-tmp-"  # in local temporary names (see local/upload.py, TEMP_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Bounds on memory, concurrency and patience for every store of a process.

    Memory per open read is at most ``read_ahead_bytes + 2 × read_chunk_bytes``; per open
    upload at most ``(max_parts_in_flight + 1) × current part size``.
    """

    read_chunk_bytes: int = 4 * MIB  # largest chunk a read yields (and one GET read's buffer)
    read_ahead_bytes: int = 16 * MIB  # bytes read ahead of the consumer, per open read
    range_bytes: int = 64 * MIB  # one ranged GET covers at most this; the next one re-checks ETag
    part_size_bytes: int = 8 * MIB  # first multipart part size; S3 needs >= 5 MiB
    # An object appended server-side (``Upload.append``, UploadPartCopy) is copied in parts
    # of at most this many bytes: S3's limit on a copied part. Smaller only in tests.
    copy_part_bytes: int = MAX_PART_BYTES
    max_parts_in_flight: int = 2  # part uploads running at once, per upload
    retry_seconds: float = 30.0  # how long transient errors are retried without progress
    retry_backoff_max_seconds: float = 2.0  # longest sleep between two attempts
    max_pool_connections: int = 64  # HTTP connections kept by the S3 client
    head_in_flight: int = 32  # existence checks of manifest entries at once
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0  # per socket read, not per object
    fsync: bool = False  # local uploads: fsync the file before renaming it into place
    # Local reads and small outputs of at most this many bytes run on the event loop: for
    # them a trip to a worker thread (and the GIL hand-offs it takes) costs more than the
    # file calls themselves. 0: every local file call runs in a thread.
    local_inline_bytes: int = 64 * 1024
    max_small_object_bytes: int = 256 * MIB  # get_bytes refuses (and manifests) above this

    def __post_init__(self) -> None:
        if self.part_size_bytes < MIN_PART_BYTES:
            raise ValueError("part_size_bytes must be at least 5 MiB (S3's minimum part size)")
        if not MIN_PART_BYTES <= self.copy_part_bytes <= MAX_PART_BYTES:
            raise ValueError("copy_part_bytes must be from 5 MiB to 5 GiB (S3's part limits)")
        if min(self.read_chunk_bytes, self.read_ahead_bytes, self.range_bytes) < 1:
            raise ValueError("read_chunk_bytes, read_ahead_bytes and range_bytes must be positive")
        if self.max_parts_in_flight < 1 or self.head_in_flight < 1:
            raise ValueError("max_parts_in_flight and head_in_flight must be at least 1")


def part_size(settings: StorageSettings, part_number: int) -> int:
    """The size of part ``part_number`` (1-based) of a streamed multipart upload.

    Parts 1-1,000 have ``part_size_bytes``; the size doubles every 1,000 parts, capped
    at 5 GiB. From 8 MiB that allows ~7.8 GiB in 1,000 parts, ~54 GiB in 3,000 and
    ~7.8 TiB (beyond S3's 5 TiB object limit) in 10,000, so no output needs more parts
    than S3 allows, and small outputs keep small parts (and small memory).
    """
    step = (part_number - 1) // PARTS_PER_SIZE_STEP
    return min(settings.part_size_bytes << step, MAX_PART_BYTES)


def min_part_size(part_number: int) -> int:
    """The least size part ``part_number`` may have unless it is the last one.

    S3 asks 5 MiB of every part but the last. Parts of any other origin than the streamed
    ones (a short buffer shipped before an object copied server-side, the copied parts
    themselves) keep to 5 MiB doubled every 1,000 parts, the steps of :func:`part_size`:
    10,000 such parts still hold ~4.9 TiB (S3's object limit is 5 TiB), so joining many
    objects does not run out of part numbers long before the size limit.
    """
    step = (part_number - 1) // PARTS_PER_SIZE_STEP
    return min(MIN_PART_BYTES << step, MAX_PART_BYTES)


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object: its key (an absolute path for local files), size and version.

    ``etag`` is the S3 ETag exactly as S3 returned it (quotes included), or
    ``f"{size}-{mtime_ns}"`` for a local file.
    """

    key: str
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An upload begun and neither completed nor aborted (a leftover of a killed run)."""

    key: str
    upload_id: str  # the S3 UploadId, or the local temporary file's path


# ----------------------------------------------------------------------------- errors


class StorageError(BtAgentError):
    """A storage operation failed; the message names the s3:// URI or the path."""


class ObjectNotFoundError(StorageError):
    """The object does not exist."""


class ObjectChangedError(StorageError):
    """The object changed (or vanished) after it was listed: a new ETag mid-read."""


class ObjectTooLargeError(StorageError):
    """``get_bytes`` of an object over ``max_small_object_bytes``; read it in ranges instead."""


class PreconditionFailed(StorageError):
    """A conditional write was refused: the key exists (If-None-Match) or has another ETag."""


class InputError(UsageError, ValueError):
    """A problem with the job's inputs that the user must fix (the caller exits 2)."""


# ----------------------------------------------------------------------------- messages


def changed_before_append(
    source: str, how: str, info: ObjectInfo, target: str
) -> ObjectChangedError:
    """An object to append (``info``, at ``source``) that ``how`` ("changed", "was
    deleted") since it was listed: nothing of ``target`` was written."""
    return ObjectChangedError(
        f"{source} {how} after it was listed (listed ETag {info.etag}, {info.size} bytes), so "
        f"it was not appended to {target}, which was not written"
    )


def appending_error(error: StorageError, source: str, target: str) -> StorageError:
    """``error`` of reading ``source`` for an append, as the same kind of error that also
    names the upload it was for."""
    return type(error)(f"{error} (while appending it to {target}, which was not written)")


def exception_summary(error: BaseException) -> str:
    """An exception in one line for a message: its text, with its type when the text alone
    is vague (and the type alone when it has no text)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ----------------------------------------------------------------------------- reads


_END = object()


class ChunkReader:
    """An object's bytes as an async iterator, read ahead by a background task.

    The task reads while fewer than ``ahead_bytes`` wait for the consumer, so memory is
    bounded (by ``ahead_bytes`` plus one chunk) whatever the object's size, and chunks
    are handed on as the store gives them, without joining. Use it as ``async with
    store.read(obj) as chunks: async for chunk in chunks: ...`` so the task and its
    connection are released even when the consumer stops early; an error of the store is
    raised by ``__anext__`` after the bytes that preceded it.

    ``ahead_bytes=0`` reads nothing ahead: no task, the producer is iterated as the
    consumer asks (for reads that are done at once, such as small local files).
    """

    def __init__(
        self, produce: Callable[[], AsyncGenerator[bytes, None]], ahead_bytes: int
    ) -> None:
        self._produce = produce
        self._ahead = ahead_bytes
        self._queue: asyncio.Queue[object] = asyncio.Queue()  # bounded in bytes, by ``_held``
        self._held = 0  # bytes in the queue
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._direct = ahead_bytes <= 0
        self._producer: AsyncGenerator[bytes, None] | None = None
        self._done = False

    async def _fill(self) -> None:
        producer = self._produce()
        queue = self._queue
        try:
            async with contextlib.aclosing(producer):
                async for chunk in producer:
                    queue.put_nowait(chunk)
                    self._held += len(chunk)
                    while self._held >= self._ahead:
                        self._room.clear()
                        await self._room.wait()
        except Exception as error:  # handed to the consumer, raised in order
            queue.put_nowait(error)
        except asyncio.CancelledError:
            # Cancelled by someone other than ``aclose`` (loop shutdown): a consumer may be
            # waiting in ``get``; drop what was read and wake it rather than leave it hanging.
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(StorageError("the read was cancelled"))
            raise
        else:
            queue.put_nowait(_END)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if self._direct:
            if self._producer is None:
                self._producer = self._produce()
            try:
                return await anext(self._producer)
            except BaseException:
                self._done = True
                raise
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._fill())
        item = await self._queue.get()
        if isinstance(item, bytes):
            self._held -= len(item)
            if self._held < self._ahead:
                self._room.set()
            return item
        self._done = True
        if isinstance(item, BaseException):
            raise item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading ahead and release the connection; safe to call twice."""
        self._done = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.aclose()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# ----------------------------------------------------------------------------- uploads


# Told of an upload's id before anything is sent under it. ``None`` first when the id is
# S3's to give: a multipart upload is about to be begun (a stop or a crash during that
# call leaves an upload whose id nobody heard of, so the intent is recorded first).
UploadIdCallback = Callable[[str | None], Awaitable[None]]


class Upload(ABC):
    """One output object being written; nothing is visible under its key before ``commit``.

    An async context manager: leaving it without a successful :meth:`commit` (an error,
    a cancellation, or simply forgetting) aborts the upload, so no partial object is ever
    seen. ``upload_id`` is set once a multipart upload exists (for a local upload, the
    temporary file's path, just before the file is created).
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.upload_id: str | None = None
        self.bytes_written = 0
        self.committed = False
        self.aborted = False

    @property
    def uri(self) -> str:
        """Where the upload goes, for messages (``s3://bucket/key``, ``file:///path``)."""
        return self.key

    @abstractmethod
    async def write(self, data: BytesLike) -> None:
        """Append ``data``; may wait while earlier parts upload (that is the back-pressure)."""
        raise NotImplementedError

    async def append(self, source: Store, info: ObjectInfo) -> None:
        """Append the whole object ``info`` of ``source`` (read at its ETag) to this upload.

        Here the object streams through ``source.read(info)`` into :meth:`write` (memory:
        the read's chunks and read-ahead plus this upload's buffers); a backend may do
        better (S3: a server-side copy, :class:`~agent.storage.s3.upload.S3Upload`). An
        object that changed or vanished since ``info`` was read raises
        :class:`ObjectChangedError` naming it and this upload, before or at ``commit``.
        """
        await self._stream(source, info, 0, info.size)

    async def _stream(self, source: Store, info: ObjectInfo, start: int, end: int) -> None:
        """Write bytes ``start`` to ``end`` of ``info`` from ``source``; an error of the read
        (not of the writes) is raised again naming this upload too."""
        self._check_open()
        if start >= end:
            return
        async with source.read(info, start, end) as chunks:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except StorageError as error:
                    raise appending_error(error, source.uri(info.key), self.uri) from error
                await self.write(chunk)

    @abstractmethod
    async def commit(self, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Make the object visible and return its ETag.

        ``if_none_match`` refuses to replace an existing object, ``if_match`` replaces only
        the object with that ETag; a refusal raises :class:`PreconditionFailed` (and the
        upload is aborted on leaving the context).
        """
        raise NotImplementedError

    @abstractmethod
    async def abort(self) -> None:
        """Discard everything written; safe to call twice and after a failed commit."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self.committed or self.aborted:
            state = "committed" if self.committed else "aborted"
            raise StorageError(f"the upload of {self.key} is already {state}")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed and not self.aborted:
            # Shielded: a second cancellation must not leave a multipart upload behind.
            await asyncio.shield(self.abort())


class Store(Protocol):
    """One bucket (or the local file system); keys are S3 keys or absolute paths."""

    def uri(self, key: str) -> str:
        """``s3://bucket/key`` or ``file:///path``, for messages."""
        ...

    async def list_objects(self, prefix: str, *, exclude: Sequence[str] = ()) -> list[ObjectInfo]:
        """Objects under ``prefix``, sorted by key, folder markers and ``exclude`` left out."""
        ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    def read(self, obj: ObjectInfo, start: int = 0, end: int | None = None) -> ChunkReader:
        """Bytes ``start`` to ``end`` (exclusive; ``None``: the end) of the listed version."""
        ...

    def open_upload(
        self,
        key: str,
        *,
        kms_key_id: str | None = None,
        metadata: dict[str, str] | None = None,
        content_type: str | None = None,
        on_upload_id: UploadIdCallback | None = None,
    ) -> Upload: ...

    async def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag, or ``None`` if there is no such object."""
        ...

    async def put_bytes(
        self, key: str, data: BytesLike, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write a small object; return its ETag; raise ``PreconditionFailed`` when refused."""
        ...

    async def delete(self, key: str) -> None: ...

    async def open_uploads(
        self, keys: Iterable[str], *, under: str | None = None
    ) -> list[PendingUpload]:
        """The uploads of ``keys`` begun and neither completed nor aborted, whoever began them.

        ``under``, a prefix every key shares, is looked at first, once: when nothing is open
        there, ``keys`` is not even read (it may be a generator over many files), and memory
        follows what is open, not how many keys there are.
        """
        ...

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None: ...
