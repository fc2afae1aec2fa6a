"""Local outputs: a temporary file next to the final name, renamed into place on commit.

A reader never sees a partial file. The temporary name has a fixed length
(``.bt-agent-tmp-<name hash>-<serial>``, see :data:`TEMP_NAME_PATTERN`), so it fits
wherever the final name does, and it carries a hash of the final name, so the leftovers
of a killed run are found by the key they were meant for (:func:`open_temps`,
:func:`open_temps_under`). Listings skip these temporary files (:func:`is_temp_name`).
A file's version (:func:`file_etag`) and the message of a failed file call
(:func:`os_error`) are here too, and shared with :mod:`agent.storage.local.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import re
import secrets
from collections.abc import Callable, Iterable
from typing import BinaryIO

from agent._compat import BytesLike
from agent.storage.base import (
    TEMP_MARKER,
    ObjectChangedError,
    ObjectInfo,
    PendingUpload,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    Store,
    Upload,
    UploadIdCallback,
    changed_before_append,
)

_FLUSH_BYTES = 1 << 20  # small writes are gathered into one write call of this size
_COPY_BYTES = 1 << 30  # one copy_file_range/sendfile call moves at most this much


def file_etag(info: os.stat_result) -> str:
    """A local file's version: its size and modification time in nanoseconds."""
    return f"{info.st_size}-{info.st_mtime_ns}"


# Temporary names: ``.bt-agent-tmp-<16 hex: hash of the final name>-<tag><serial>``, 45
# characters or so whatever the final name's length, with a tag random per process and a
# serial (one random draw per process, not per file; "xb" refuses a name that exists in
# any case). Before this form, temporary names were ``.<name>.bt-agent-tmp-<hex>``, which
# did not fit next to a final name of more than ~230 bytes; those are still recognised
# (as leftovers to clean up, and never listed as inputs).
#
# Every name the agent gives a temporary file, of this form or the earlier one: listings
# leave these out, and only these are ever deleted as leftovers.
TEMP_NAME_PATTERN = re.compile(
    r"\.bt-agent-tmp-(?P<hash>[0-9a-f]{16})-[0-9a-f]+|\.(?P<name>.+)\.bt-agent-tmp-[0-9a-f]+",
    re.DOTALL,
)
_TEMP_TAG = secrets.token_hex(4)
_TEMP_SERIAL = itertools.count()


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a file name, not a path) is one of the agent's temporary files."""
    return TEMP_NAME_PATTERN.fullmatch(name) is not None


def _name_hash(name: str) -> str:
    """The part of a temporary name that says which final name it is for."""
    return hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def temp_is_for(temp_name: str, name: str) -> bool:
    """Whether the temporary file ``temp_name`` was (or is) an upload of ``name``."""
    found = TEMP_NAME_PATTERN.fullmatch(temp_name)
    if found is None:
        return False
    if found["hash"] is not None:
        return found["hash"] == _name_hash(name)
    return found["name"] == name


def open_temps_under(under: str, keys: Iterable[str]) -> list[PendingUpload]:
    """The temporary files anywhere below ``under`` that are uploads of ``keys``.

    One walk finds the temporary files; ``keys`` is read only if there are any, and only
    the keys in directories that hold some are kept and hashed.
    """
    base = os.path.normpath(under)
    if not os.path.isdir(base):  # outputs go below a directory: none, none open either
        return []
    temps: dict[str, list[str]] = {}
    for dirpath, _, filenames in os.walk(base):
        if names := [name for name in filenames if is_temp_name(name)]:
            temps[dirpath] = names
    if not temps:
        return []
    wanted = _by_directory(key for key in keys if os.path.dirname(key) in temps)
    return _sorted(
        upload
        for directory, names in wanted.items()
        for upload in _temps_of(directory, names, temps[directory])
    )


def open_temps(keys: Iterable[str]) -> list[PendingUpload]:
    """The temporary files in the directories of ``keys`` that are uploads of those keys."""
    found: list[PendingUpload] = []
    for directory, names in _by_directory(keys).items():
        try:
            entries = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        found += _temps_of(directory, names, entries)
    return _sorted(found)


def _by_directory(keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """``keys`` by directory: directory -> {file name: key}."""
    grouped: dict[str, dict[str, str]] = {}
    for key in keys:
        directory, name = os.path.split(key)
        grouped.setdefault(directory, {})[name] = key
    return grouped


def _temps_of(directory: str, names: dict[str, str], entries: Iterable[str]) -> list[PendingUpload]:
    """Which of ``entries`` (file names in ``directory``) are temporary files of the keys
    ``names`` maps to (file name -> key, all in ``directory``)."""
    hashes = {_name_hash(name): key for name, key in names.items()}
    found: list[PendingUpload] = []
    for entry in entries:
        temp = TEMP_NAME_PATTERN.fullmatch(entry)
        if temp is None:
            continue
        hashed: str | None = temp["hash"]
        owner = hashes.get(hashed) if hashed is not None else names.get(temp["name"])
        if owner is not None:
            found.append(PendingUpload(owner, os.path.join(directory, entry)))
    return found


def _sorted(uploads: Iterable[PendingUpload]) -> list[PendingUpload]:
    return sorted(uploads, key=lambda upload: (upload.key, upload.upload_id))


def os_error(error: OSError, action: str, path: str) -> StorageError:
    reason = error.strerror or str(error)
    return StorageError(f"cannot {action} file://{path}: {reason}")


class LocalUpload(Upload):
    """Writes a temporary file next to ``key``; commit renames it into place.

    Like a small S3 output (one PutObject, no UploadId), an output that never reaches
    ``_FLUSH_BYTES`` stays in memory until ``commit``, which creates, writes and renames
    its file in one call in a thread, so ``on_upload_id`` is not called for it: a file of
    many small outputs costs one trip to the thread pool each, not three, and no upload
    record in the job's state.
    """

    def __init__(
        self, key: str, settings: StorageSettings, on_upload_id: UploadIdCallback | None
    ) -> None:
        super().__init__(key)
        self.settings = settings
        self._on_upload_id = on_upload_id
        self._file: BinaryIO | None = None
        self._buffer = bytearray()
        self._io: asyncio.Future[None] | None = None  # the file call running in a thread

    @property
    def uri(self) -> str:
        return f"file://{self.key}"

    async def append(self, source: Store, info: ObjectInfo) -> None:
        """Append the object ``info`` of ``source``; a local file of at least
        ``_FLUSH_BYTES`` is copied by the kernel (``os.copy_file_range``, else
        ``os.sendfile``) in a thread, its version checked before and after, without passing
        through this process; anything else streams (:meth:`Upload.append`)."""
        self._check_open()
        if info.size < _FLUSH_BYTES or source.uri(info.key) != f"file://{info.key}":
            await super().append(source, info)
            return
        file = await self._open()
        if self._buffer:
            await self._flush(file)
        self.bytes_written += info.size
        await self._thread(lambda: _copy_into(file, info, self.uri), "write")

    async def _thread(self, fn: Callable[[], None], action: str) -> None:
        # Shielded so that a cancelled caller still lets the call finish before abort
        # closes the file under it (abort waits for ``_io``).
        self._io = asyncio.ensure_future(asyncio.to_thread(fn))
        try:
            await asyncio.shield(self._io)
        except OSError as error:
            raise os_error(error, action, self.key) from error

    def _temp_name(self) -> str:
        directory, name = os.path.split(self.key)
        serial = f"{_TEMP_TAG}{next(_TEMP_SERIAL):x}"
        return os.path.join(directory, f"{TEMP_MARKER}{_name_hash(name)}-{serial}")

    async def _open(self) -> BinaryIO:
        if self._file is None:
            directory = os.path.dirname(self.key)
            temp = self._temp_name()
            # Recorded before the file exists: a stop or a crash at any point after leaves
            # the name to clean up from (``abort`` deletes it if it came to exist).
            self.upload_id = temp
            if self._on_upload_id is not None:
                await self._on_upload_id(temp)

            def create() -> None:
                os.makedirs(directory, exist_ok=True)
                self._file = open(temp, "xb", buffering=0)

            await self._thread(create, "create")
        assert self._file is not None
        return self._file

    async def write(self, data: BytesLike) -> None:
        self._check_open()
        size = len(memoryview(data).cast("B"))
        self.bytes_written += size
        if self._file is None and len(self._buffer) + size < _FLUSH_BYTES:
            self._buffer += data  # small so far: nothing on disk yet
            return
        file = await self._open()
        if size >= _FLUSH_BYTES and not self._buffer:
            await self._thread(lambda: _write_all(file, data), "write")
            return
        self._buffer += data
        if len(self._buffer) >= _FLUSH_BYTES:
            await self._flush(file)

    async def _flush(self, file: BinaryIO) -> None:
        buffer, self._buffer = self._buffer, bytearray()
        await self._thread(lambda: _write_all(file, buffer), "write")

    async def commit(self, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        self._check_open()
        if self._file is None:
            return await self._commit_small(if_none_match, if_match)
        file = await self._open()
        await self._flush(file)
        temp, key, fsync = self.upload_id, self.key, self.settings.fsync
        assert temp is not None
        version: list[str] = []

        def publish() -> None:
            if fsync:
                os.fsync(file.fileno())
            file.close()
            _rename_into_place(temp, key, if_none_match, if_match)
            version.append(file_etag(os.stat(key)))

        await self._thread(publish, "write")
        self.committed = True
        return version[0]

    async def _commit_small(self, if_none_match: bool, if_match: str | None) -> str:
        """Create, write and rename the whole (small) output in one call in a thread."""
        data, temp, key, fsync = self._buffer, self._temp_name(), self.key, self.settings.fsync
        version: list[str] = []

        def publish() -> None:
            try:
                file = open(temp, "xb", buffering=0)
            except FileNotFoundError:  # the first output in its directory
                os.makedirs(os.path.dirname(key), exist_ok=True)
                file = open(temp, "xb", buffering=0)
            try:
                with file:
                    _write_all(file, data)
                    if fsync:
                        os.fsync(file.fileno())
                _rename_into_place(temp, key, if_none_match, if_match)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            version.append(file_etag(os.stat(key)))

        if len(data) <= self.settings.local_inline_bytes and not fsync:
            try:
                publish()
            except OSError as error:
                raise os_error(error, "write", key) from error
        else:
            await self._thread(publish, "write")
        self.committed = True
        self._buffer = bytearray()
        return version[0]

    async def abort(self) -> None:
        if self.committed or self.aborted:
            return
        self.aborted = True
        if self._io is not None:
            with contextlib.suppress(Exception):
                await self._io
        file, temp = self._file, self.upload_id
        if file is not None:
            file.close()
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def _write_all(file: BinaryIO, data: BytesLike) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = file.write(view)
        view = view[written or 0 :]


def _copy_into(file: BinaryIO, info: ObjectInfo, target: str) -> None:
    """Append the local file ``info`` to ``file``, refusing another version of it."""

    def changed(how: str) -> ObjectChangedError:
        return changed_before_append(f"file://{info.key}", how, info, target)

    try:
        source = open(info.key, "rb", buffering=0)
    except FileNotFoundError:
        raise changed("no longer exists") from None
    except OSError as error:
        raise os_error(error, "read", info.key) from error
    with source:
        if file_etag(os.fstat(source.fileno())) != info.etag:
            raise changed("changed")
        try:
            copied = _copy_fd(source.fileno(), file.fileno(), info.size)
        except OSError as error:
            reason = error.strerror or str(error)
            raise StorageError(f"cannot append file://{info.key} to {target}: {reason}") from error
        if copied != info.size or file_etag(os.fstat(source.fileno())) != info.etag:
            raise changed("changed while it was being appended")


def _copy_fd(source: int, target: int, size: int) -> int:
    """Copy ``size`` bytes from ``source``'s position to ``target``'s; the bytes copied
    (fewer when the source ended early). ``copy_file_range`` where the kernel and the file
    systems allow it, else ``sendfile``, else reads and writes."""
    copied = 0
    ways = [way for way in ("copy_file_range", "sendfile") if hasattr(os, way)]
    while copied < size:
        count = min(size - copied, _COPY_BYTES)
        try:
            if not ways:
                data = os.read(source, min(count, _FLUSH_BYTES))
                _write_all_fd(target, data)
                moved = len(data)
            elif ways[0] == "copy_file_range":
                moved = os.copy_file_range(source, target, count)
            else:
                moved = os.sendfile(target, source, None, count)
        except OSError as error:
            unsupported = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
            if ways and error.errno in unsupported:
                ways.pop(0)  # the position is unchanged after such a refusal
                continue
            raise
        if moved == 0:
            break
        copied += moved
    return copied


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rename_into_place(temp: str, key: str, if_none_match: bool, if_match: str | None) -> None:
    if if_match is not None:
        try:
            current = file_etag(os.stat(key))
        except FileNotFoundError:
            current = None
        if current != if_match:
            raise PreconditionFailed(
                f"file://{key} was not replaced: its version is {current}, not {if_match}"
            )
    if not if_none_match:
        os.replace(temp, key)
        return
    exists = PreconditionFailed(f"file://{key} already exists; it was not replaced")
    try:
        os.link(temp, key)  # atomic: fails if the name is taken
    except FileExistsError:
        raise exists from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
            raise
        if os.path.lexists(key):  # a file system without hard links: best effort
            raise exists from None
        os.replace(temp, key)
        return
    os.unlink(temp)
