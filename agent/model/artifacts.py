"""The model artifacts: ``ModelDataUrl``'s model.tar.gz streamed down and unpacked into the
model directory (docs/design.md §1.4, README "From SageMaker: the model file").

The object is read with ``Store.read`` chunk by chunk and fed to a tar reader in streaming
mode (``r|gz``) in a worker thread, so neither the archive nor a copy of it is ever held
whole, in memory or on disk. Members are written by this module, not by ``tarfile``: each
is checked first, and an archive is refused, naming the member, for an absolute path, a
``..`` component, a hard link, a symbolic link whose target leaves the directory, a device
file, a FIFO or any other kind that is not a regular file or directory, and when it unpacks
to more than ``MAX_UNPACKED_BYTES`` or ``MAX_MEMBERS``. Unpacking goes to a temporary
directory beside the model directory, renamed into place only when the whole archive was
good: a failed fetch leaves the old directory as it was (or none).

A marker file in the model directory records the source and its ETag; when a HEAD of the
object shows the same ETag, nothing is downloaded. A lock file beside the directory keeps
two agents of one host from unpacking into it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import tarfile
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent._compat import MIB
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.job import DataUri, JobSettings, ModelDefinition
    from agent.storage import Stores

log = logging.getLogger("agent.model")

MAX_UNPACKED_BYTES = 64 * 1024 * MIB  # 64 GiB: the sum of the members' sizes
MAX_MEMBERS = 1_000_000
MARKER = ".bt-agent-artifacts.json"
DEFAULT_MODELS_DIR = "bt-agent-models"  # under the working directory
_WRITE_BYTES = 1 * MIB  # one read of a member, one write of its file


class ArtifactError(UsageError):
    """The model artifacts cannot be used: missing, not a tar.gz, or refused for safety."""


def default_model_dir(job: JobSettings, model: ModelDefinition | None, cwd: str) -> Path:
    """``Agent.ModelDir`` (relative to ``cwd``), else ``<cwd>/bt-agent-models/<ModelName>``."""
    if job.agent.model_dir is not None:
        return Path(cwd, job.agent.model_dir)
    name = (model.name if model is not None else None) or job.model_name or "model"
    return Path(cwd, DEFAULT_MODELS_DIR, name)


async def fetch_artifacts(
    stores: Stores,
    source: DataUri,
    model_dir: Path,
    *,
    max_bytes: int = MAX_UNPACKED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Make ``model_dir`` hold the unpacked ``source`` archive; return ``model_dir``.

    Nothing is downloaded when the directory's marker names ``source`` with the ETag the
    object has now. Raises ``ArtifactError`` (naming the member and the archive) for an
    archive that is refused, ``StorageError`` when the object cannot be read.
    """
    model_dir = Path(os.path.abspath(model_dir))
    store = await stores.get(source)
    info = await store.head(source.key)
    if info is None:
        raise ArtifactError(
            f"the model artifacts {source} do not exist; check the model file's ModelDataUrl"
        )
    wanted = {"source": str(source), "etag": info.etag}
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = await asyncio.to_thread(_lock, model_dir)
    try:
        if _read_marker(model_dir) == wanted:
            log.info(
                "model artifacts %s (ETag %s) already unpacked in %s; nothing downloaded",
                source,
                info.etag,
                model_dir,
            )
            return model_dir
        _refuse_foreign(model_dir)
        _remove_leftovers(model_dir)
        temporary = model_dir.parent / f".{model_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
        temporary.mkdir(mode=0o700)
        try:
            log.info("fetching model artifacts %s (%d bytes) into %s", source, info.size, model_dir)
            async with store.read(info) as chunks:
                counts = await _unpack_stream(
                    chunks, temporary, str(source), max_bytes, max_members
                )
            marker = {**wanted, "size": info.size}
            (temporary / MARKER).write_text(json.dumps(marker, ensure_ascii=False) + "\n")
            _swap(temporary, model_dir)
        finally:
            if temporary.exists():
                await asyncio.to_thread(shutil.rmtree, temporary, True)
        log.info(
            "model artifacts unpacked into %s: %d files, %d bytes", model_dir, counts[0], counts[1]
        )
        return model_dir
    finally:
        lock.close()


# ---------------------------------------------------------------------- the directory


def _lock(model_dir: Path) -> IO[bytes]:
    """An exclusive lock on ``.<name>.lock`` beside the model directory (blocks until free)."""
    file = open(model_dir.parent / f".{model_dir.name}.lock", "ab")  # noqa: SIM115
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    except BaseException:
        file.close()
        raise
    return file


def _read_marker(model_dir: Path) -> dict[str, object] | None:
    try:
        found = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    return {"source": found.get("source"), "etag": found.get("etag")}


def _refuse_foreign(model_dir: Path) -> None:
    """Refuse to replace a non-empty directory that bt-agent did not fill (no marker)."""
    if model_dir.is_symlink() or (model_dir.exists() and not model_dir.is_dir()):
        raise ArtifactError(
            f"{model_dir} exists and is not a directory; remove it or choose another Agent.ModelDir"
        )
    if model_dir.is_dir() and not (model_dir / MARKER).exists() and any(model_dir.iterdir()):
        raise ArtifactError(
            f"{model_dir} holds files that bt-agent did not unpack (it has no {MARKER}); "
            "bt-agent will not replace them: empty it, or choose another Agent.ModelDir"
        )


def _remove_leftovers(model_dir: Path) -> None:
    """Temporary directories of a fetch that was killed (the lock is held: none is running)."""
    for pattern in (f".{model_dir.name}.tmp-*", f".{model_dir.name}.old-*"):
        for path in model_dir.parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def _swap(temporary: Path, model_dir: Path) -> None:
    """Put ``temporary`` in place of ``model_dir``, the old one removed only once it is."""
    old = None
    if model_dir.exists():
        old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(model_dir, old)
    try:
        os.rename(temporary, model_dir)
    except BaseException:
        if old is not None:
            os.rename(old, model_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- streaming


class _Source:
    """A blocking ``read(n)`` over an async chunk iterator, for ``tarfile`` in a thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: AsyncIterator[bytes]) -> None:
        self._loop = loop
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._done = False
        self.stopped = False

    async def _next(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return b""

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and not self._done:
            if self.stopped:
                raise ArtifactError("the fetch of the model artifacts was stopped")
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk:
                self._buffer = memoryview(chunk)
            else:
                self._done = True
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), memoryview(b"")
        else:
            data, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
        return data


async def _unpack_stream(
    chunks: AsyncIterator[bytes], into: Path, archive: str, max_bytes: int, max_members: int
) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    source = _Source(loop, chunks)
    work = loop.run_in_executor(None, _unpack, source, into, archive, max_bytes, max_members)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        source.stopped = True  # the thread stops at its next read; wait for it to let go
        with contextlib.suppress(BaseException):
            await work
        raise


# ---------------------------------------------------------------------- unpacking


def _unpack(
    source: _Source, into: Path, archive: str, max_bytes: int, max_members: int
) -> tuple[int, int]:
    """Unpack the tar.gz read from ``source`` into the empty directory ``into``.

    Returns (regular files, bytes). Raises ``ArtifactError`` naming the member.
    """
    files = total = members = 0
    links: list[tuple[str, tarfile.TarInfo]] = []
    modes: list[tuple[str, int]] = []  # directories get their mode last: 0o555 stops writes
    root = str(into)
    try:
        with tarfile.open(fileobj=source, mode="r|gz") as tar:  # type: ignore[call-overload]
            for member in tar:
                members += 1
                if members > max_members:
                    raise ArtifactError(
                        f"the model archive {archive} has more than {max_members:,} members, "
                        "the most bt-agent unpacks; pack fewer files"
                    )
                parts = _parts(member, archive)
                if not parts:
                    continue  # the archive's own "." entry
                target = os.path.join(root, *parts)
                _check_parents(root, parts, member, archive)
                if member.isdir():
                    _make_dir(target, member, archive)
                    modes.append((target, (member.mode & 0o777) | 0o700))
                elif member.isreg():
                    total += member.size
                    if total > max_bytes:
                        raise ArtifactError(
                            f"the model archive {archive} unpacks to more than {max_bytes:,} "
                            f"bytes (at member {_shown(member)}), the most bt-agent unpacks"
                        )
                    _write_file(tar, member, target, archive)
                    files += 1
                elif member.issym():
                    links.append((_make_symlink(root, parts, member, archive), member))
                else:
                    raise ArtifactError(_refusal(member, archive))
    except (tarfile.TarError, zlib.error, EOFError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, EOFError):
            raise ArtifactError(
                f"cannot unpack the model archive {archive} into {into.parent}: "
                f"{error.strerror or error}"
            ) from error
        raise ArtifactError(
            f"the model archive {archive} is not a valid tar.gz ({error}); give "
            "ModelDataUrl a gzip-compressed tar file, as made by tar -czf model.tar.gz -C dir ."
        ) from error
    # Each link was checked on its own; links through links (a -> ".", b -> "a/..") can
    # only be judged once all exist: every one must still resolve inside.
    real_root = os.path.realpath(root)
    for path, member in links:
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise ArtifactError(_outside(member, archive))
    for path, mode in reversed(modes):
        os.chmod(path, mode)
    os.chmod(root, 0o755)  # readable by the model server's user, whoever it is
    return files, total


def _shown(member: tarfile.TarInfo) -> str:
    return json.dumps(member.name, ensure_ascii=True)


def _parts(member: tarfile.TarInfo, archive: str) -> list[str]:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise ArtifactError(
            f"the model archive {archive} holds the member {_shown(member)} with an absolute "
            "path; refused: every member must be relative to the model directory"
        )
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArtifactError(
            f"the model archive {archive} holds the member {_shown(member)}, whose path has "
            "a '..' component; refused: it could write outside the model directory"
        )
    if parts == [MARKER]:
        raise ArtifactError(
            f"the model archive {archive} holds {_shown(member)}, the name bt-agent keeps "
            "its own cache marker under; rename that file"
        )
    return parts


def _check_parents(root: str, parts: list[str], member: tarfile.TarInfo, archive: str) -> None:
    """No directory on the way to the member may be a symbolic link: it could lead out."""
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path)  # a directory the archive does not list: as tar makes it
            os.chmod(path, 0o755)
            continue
        if stat.S_ISLNK(info.st_mode):
            raise ArtifactError(
                f"the model archive {archive} holds the member {_shown(member)}, whose path "
                "goes through a symbolic link of the archive; refused: it could write "
                "outside the model directory"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise ArtifactError(
                f"the model archive {archive} holds the member {_shown(member)} under "
                f"{json.dumps(part)}, which the archive made a file; refused"
            )


def _clear(target: str, member: tarfile.TarInfo, archive: str) -> None:
    """Make room for a member given twice (the later one wins, as with tar): never a dir."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise ArtifactError(
            f"the model archive {archive} holds the member {_shown(member)} where it already "
            "made a directory; refused"
        )
    os.unlink(target)


def _make_dir(target: str, member: tarfile.TarInfo, archive: str) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        os.mkdir(target, 0o700)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise ArtifactError(
            f"the model archive {archive} holds the directory {_shown(member)} where it "
            "already made a file or link; refused"
        )


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: str, archive: str) -> None:
    _clear(target, member, archive)
    reader = tar.extractfile(member)
    assert reader is not None  # a regular file
    mode = (member.mode & 0o777) | 0o600  # no set-user-ID, set-group-ID or sticky bits
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(target, flags, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        while data := reader.read(_WRITE_BYTES):
            out.write(data)
        os.fchmod(out.fileno(), mode)
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(target, (member.mtime, member.mtime))


def _make_symlink(root: str, parts: list[str], member: tarfile.TarInfo, archive: str) -> str:
    link = member.linkname
    where = os.path.join(*parts[:-1]) if len(parts) > 1 else ""
    resolved = os.path.normpath(os.path.join(where, link))
    if not link or link.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise ArtifactError(_outside(member, archive))
    target = os.path.join(root, *parts)
    _clear(target, member, archive)
    os.symlink(link, target)
    return target


def _outside(member: tarfile.TarInfo, archive: str) -> str:
    return (
        f"the model archive {archive} holds the symbolic link {_shown(member)} to "
        f"{json.dumps(member.linkname)}, which leads outside the model directory; refused: "
        "links must stay inside it (use a relative target)"
    )


def _refusal(member: tarfile.TarInfo, archive: str) -> str:
    if member.islnk():
        what = f"a hard link to {json.dumps(member.linkname)}"
    elif member.ischr():
        what = "a character device"
    elif member.isblk():
        what = "a block device"
    elif member.isfifo():
        what = "a FIFO (named pipe)"
    else:
        what = f"a member of tar type {member.type!r}"
    return (
        f"the model archive {archive} holds the member {_shown(member)}, {what}; refused: "
        "a model archive may hold only regular files, directories and links that stay "
        "inside it"
    )
