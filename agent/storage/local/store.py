"""The local file system as a store: keys are absolute paths, a file's "ETag" is its version.

Listing follows S3's plain string prefixes, with one concession to how people name
directories: a prefix that is an existing directory lists every file under it, at any
depth (``/data/in`` means ``/data/in/``); any other prefix lists the files whose path
starts with it (``/data/in/part`` matches ``/data/in/part-1.csv`` and
``/data/in/part-2/x.csv``). Symbolic links to files are followed, links to directories
are not descended; a link that leads nowhere (dangling, or a loop) is skipped with a
warning naming it. A file's version is ``f"{size}-{mtime_ns}"``.

Outputs are written to a temporary file next to their final name and renamed into place
on commit, so a reader never sees a partial file. The temporary name has a fixed length
(``.bt-agent-tmp-<name hash>-<serial>``, see :data:`TEMP_NAME_PATTERN`), so it fits
wherever the final name does, and it carries a hash of the final name, so the leftovers
of a killed run are found by the key they were meant for (:meth:`LocalStore.open_uploads`).
Listings skip these temporary files. Blocking calls run in the default thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import secrets
import stat
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import BinaryIO, TypeVar

from agent._compat import BytesLike
from agent.storage.base import (
    TEMP_MARKER,
    ChunkReader,
    ObjectChangedError,
    ObjectInfo,
    ObjectTooLargeError,
    PendingUpload,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    Upload,
    UploadIdCallback,
)

_T = TypeVar("_T")
_FLUSH_BYTES = 1 << 20  # small writes are gathered into one write call of this size

log = logging.getLogger("agent.storage")


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


def _temp_is_for(temp_name: str, name: str) -> bool:
    """Whether the temporary file ``temp_name`` was (or is) an upload of ``name``."""
    found = TEMP_NAME_PATTERN.fullmatch(temp_name)
    if found is None:
        return False
    if found["hash"] is not None:
        return found["hash"] == _name_hash(name)
    return found["name"] == name


def _raise(error: OSError) -> None:
    raise error


def _walk(prefix: str, exclude: Sequence[str]) -> list[tuple[str, os.stat_result]]:
    """Regular files matching ``prefix`` (see the module docstring), temporary files left out.

    An entry that cannot be looked at (a dangling link, a loop of links, a link into a
    directory this process may not enter) is skipped with a warning that names it: it
    holds no data to transform. A directory that cannot be read fails the listing.
    """
    if os.path.isdir(prefix):
        base = prefix.rstrip("/") or "/"
        match = base.rstrip("/") + "/"
    else:
        base, match = os.path.dirname(prefix) or "/", prefix
        if not os.path.isdir(base):
            return []

    def wanted(path: str) -> bool:
        return not any(path.startswith(skip) for skip in exclude)

    found: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(base, onerror=_raise):
        # Descend only where a match may be: below the prefix, or above it on its way.
        dirnames[:] = [
            name
            for name in dirnames
            if wanted(d := os.path.join(dirpath, name) + "/")
            and (d.startswith(match) or match.startswith(d))
        ]
        for name in filenames:
            if is_temp_name(name):
                continue
            path = os.path.join(dirpath, name)
            if not path.startswith(match) or not wanted(path):
                continue
            try:
                info = os.stat(path)
            except OSError as error:
                _skipped(path, error)
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((path, info))
    found.sort(key=lambda item: item[0])
    return found


def _skipped(path: str, error: OSError) -> None:
    """Say why an entry of a listing is left out (nothing, if it was simply removed)."""
    if not os.path.islink(path):
        if isinstance(error, FileNotFoundError):
            return  # removed while we walked
        reason = error.strerror or str(error)
        log.warning("skipping file://%s: it cannot be looked at (%s)", path, reason)
        return
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if error.errno == errno.ELOOP:
        why = "a loop of symbolic links"
    elif isinstance(error, FileNotFoundError):
        why = "a dangling symbolic link"
    else:
        why = f"a symbolic link that cannot be followed ({error.strerror or error})"
    log.warning("skipping file://%s: %s (it points to %s)", path, why, target)


def _open_temps_under(under: str, keys: Iterable[str]) -> list[PendingUpload]:
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


def _open_temps(keys: Iterable[str]) -> list[PendingUpload]:
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


def _os_error(error: OSError, action: str, path: str) -> StorageError:
    reason = error.strerror or str(error)
    return StorageError(f"cannot {action} file://{path}: {reason}")


class LocalStore:
    """The local file system behind the :class:`~agent.storage.Store` interface."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings

    def uri(self, key: str) -> str:
        return f"file://{key}"

    async def _run(self, action: str, path: str, fn: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(fn)
        except OSError as error:
            raise _os_error(error, action, path) from error

    async def list_objects(self, prefix: str, *, exclude: Sequence[str] = ()) -> list[ObjectInfo]:
        found = await self._run("list", prefix, lambda: _walk(prefix, exclude))
        return [ObjectInfo(path, info.st_size, file_etag(info)) for path, info in found]

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            info = await asyncio.to_thread(os.stat, key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise _os_error(error, "read", key) from error
        if not stat.S_ISREG(info.st_mode):
            return None
        return ObjectInfo(key, info.st_size, file_etag(info))

    def read(self, obj: ObjectInfo, start: int = 0, end: int | None = None) -> ChunkReader:
        stop = obj.size if end is None else end
        inline = stop - start <= self.settings.local_inline_bytes
        ahead = 0 if inline else self.settings.read_ahead_bytes  # read at once: no task
        return ChunkReader(lambda: self._produce(obj, start, stop, inline), ahead)

    async def _produce(
        self, obj: ObjectInfo, start: int, end: int, inline: bool
    ) -> AsyncGenerator[bytes, None]:
        chunk_bytes = self.settings.read_chunk_bytes
        # Opening and the first read share one call, on the event loop for a small file
        # (``inline``: ``local_inline_bytes``), else in one trip to a worker thread.
        first = min(chunk_bytes, end - start)
        try:
            if inline:
                file, data, version = _open_and_read(obj.key, start, first)
            else:
                file, data, version = await asyncio.to_thread(_open_and_read, obj.key, start, first)
        except FileNotFoundError:
            raise ObjectChangedError(f"file://{obj.key} no longer exists") from None
        except OSError as error:
            raise _os_error(error, "read", obj.key) from error
        try:
            position = start
            while True:
                if version != obj.etag or (not data and position < end):
                    raise ObjectChangedError(
                        f"file://{obj.key} changed while it was being read (it was "
                        f"{obj.size} bytes, version {obj.etag}); rerun the job once the file "
                        "stays unchanged"
                    )
                position += len(data)
                if data:
                    yield data
                if position >= end:
                    return
                data, version = await asyncio.to_thread(
                    _read_checked, file, min(chunk_bytes, end - position)
                )
        except OSError as error:
            raise _os_error(error, "read", obj.key) from error
        finally:
            file.close()

    def open_upload(
        self,
        key: str,
        *,
        kms_key_id: str | None = None,
        metadata: dict[str, str] | None = None,
        content_type: str | None = None,
        on_upload_id: UploadIdCallback | None = None,
    ) -> LocalUpload:
        """A local output; ``kms_key_id``, ``metadata`` and ``content_type`` do not apply."""
        return LocalUpload(key, self.settings, on_upload_id)

    async def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        limit = self.settings.max_small_object_bytes

        def load() -> tuple[bytes, str] | None:
            try:
                with open(key, "rb") as file:
                    data = file.read(limit + 1)
                    version = file_etag(os.fstat(file.fileno()))
            except (FileNotFoundError, NotADirectoryError):
                return None
            if len(data) > limit:
                raise ObjectTooLargeError(f"file://{key} is larger than {limit} bytes")
            return data, version

        return await self._run("read", key, load)

    async def put_bytes(
        self, key: str, data: BytesLike, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        async with self.open_upload(key) as upload:
            await upload.write(data)
            return await upload.commit(if_none_match=if_none_match, if_match=if_match)

    async def delete(self, key: str) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key)

        await self._run("delete", key, remove)

    async def open_uploads(
        self, keys: Iterable[str], *, under: str | None = None
    ) -> list[PendingUpload]:
        """Temporary files left for ``keys``: one walk of ``under``, else one directory
        listing per directory of the keys."""
        if under is not None:
            return await self._run("list", under, lambda: _open_temps_under(under, keys))
        wanted = list(keys)
        if not wanted:
            return []
        where = os.path.commonpath([os.path.dirname(key) for key in wanted])
        return await self._run("list", where, lambda: _open_temps(wanted))

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        directory, name = os.path.split(upload_id)
        if directory != os.path.dirname(key) or not _temp_is_for(name, os.path.basename(key)):
            raise StorageError(f"{upload_id} is not a temporary file of file://{key}")
        await self.delete(upload_id)


def _read_checked(file: BinaryIO, size: int) -> tuple[bytes, str]:
    data = file.read(size) if size > 0 else b""
    return data, file_etag(os.fstat(file.fileno()))


def _open_and_read(path: str, start: int, size: int) -> tuple[BinaryIO, bytes, str]:
    """The file opened at ``start``, its first ``size`` bytes and its version."""
    file: BinaryIO = open(path, "rb", buffering=0)
    try:
        file.seek(start)
        return (file, *_read_checked(file, size))
    except BaseException:
        file.close()
        raise


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

    async def _thread(self, fn: Callable[[], None], action: str) -> None:
        # Shielded so that a cancelled caller still lets the call finish before abort
        # closes the file under it (abort waits for ``_io``).
        self._io = asyncio.ensure_future(asyncio.to_thread(fn))
        try:
            await asyncio.shield(self._io)
        except OSError as error:
            raise _os_error(error, action, self.key) from error

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
                raise _os_error(error, "write", key) from error
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
