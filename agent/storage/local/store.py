"""The local file system as a store: keys are absolute paths, a file's "ETag" is its version.

Listing follows S3's plain string prefixes, with one concession to how people name
directories: a prefix that is an existing directory lists every file under it, at any
depth (``/data/in`` means ``/data/in/``); any other prefix lists the files whose path
starts with it (``/data/in/part`` matches ``/data/in/part-1.csv`` and
``/data/in/part-2/x.csv``). Symbolic links to files are followed, links to directories
are not descended; a link that leads nowhere (dangling, or a loop) is skipped with a
warning naming it. A file's version is ``f"{size}-{mtime_ns}"``.

Outputs are written to a temporary file next to their final name and renamed into place
on commit (:mod:`agent.storage.local.upload`); listings skip these temporary files.
Blocking calls run in the default thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import BinaryIO, TypeVar

from agent._compat import BytesLike
from agent.storage.base import (
    ChunkReader,
    ObjectChangedError,
    ObjectInfo,
    ObjectTooLargeError,
    PendingUpload,
    StorageError,
    StorageSettings,
    UploadIdCallback,
)
from agent.storage.local.upload import (
    LocalUpload,
    file_etag,
    is_temp_name,
    open_temps,
    open_temps_under,
    os_error,
    temp_is_for,
)

_T = TypeVar("_T")

log = logging.getLogger("agent.storage")


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
            raise os_error(error, action, path) from error

    async def list_objects(self, prefix: str, *, exclude: Sequence[str] = ()) -> list[ObjectInfo]:
        found = await self._run("list", prefix, lambda: _walk(prefix, exclude))
        return [ObjectInfo(path, info.st_size, file_etag(info)) for path, info in found]

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            info = await asyncio.to_thread(os.stat, key)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise os_error(error, "read", key) from error
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
            raise os_error(error, "read", obj.key) from error
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
            raise os_error(error, "read", obj.key) from error
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
            return await self._run("list", under, lambda: open_temps_under(under, keys))
        wanted = list(keys)
        if not wanted:
            return []
        where = os.path.commonpath([os.path.dirname(key) for key in wanted])
        return await self._run("list", where, lambda: open_temps(wanted))

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        directory, name = os.path.split(upload_id)
        if directory != os.path.dirname(key) or not temp_is_for(name, os.path.basename(key)):
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
