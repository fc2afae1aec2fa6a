"""Which objects are a job's inputs (SPEC §2), and where each one's output goes (SPEC §5).

``list_inputs`` turns an ``S3Prefix`` or a ``ManifestFile`` into :class:`InputFile`
records: the object's location, its listed version, and the relative key that names its
output. ``output_uri`` is the pure naming rule, ``relative_key`` and ``exclusions`` the
pieces of the listing rule, so the runner and the tests share one definition.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import orjson

from agent._jobtypes import DataUri, parse_data_uri
from agent.storage._base import InputError, ObjectInfo, StorageError

if TYPE_CHECKING:
    from agent.storage import Stores

MAX_LISTED_PROBLEMS = 10


def file_id(uri: DataUri | str) -> str:
    """The name of a file's state objects: a digest of its input URI (keys may hold anything)."""
    return hashlib.sha256(str(uri).encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input object and the name of its output.

    ``info`` is the object as listed (size and ETag, the version to read), or ``None``
    for a manifest entry whose object does not exist (that file fails, the job goes on).
    """

    uri: DataUri  # the object itself
    relative_key: str  # the output is <S3OutputPath>/<relative_key>.out
    info: ObjectInfo | None
    manifest_index: int | None = None  # the entry's index in the manifest's JSON array
    id: str = field(init=False, repr=False, compare=False)  # file_id(uri), computed once

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", file_id(self.uri))

    @property
    def missing(self) -> bool:
        return self.info is None

    def missing_message(self) -> str:
        """Why a missing manifest entry failed, as users should see it."""
        return (
            f"{self.uri} does not exist (manifest element {self.manifest_index}, "
            f"{self.relative_key!r}); remove it from the manifest or upload the object"
        )


class ManifestError(InputError):
    """A manifest that cannot be used; ``problems`` lists each one by array index."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        super().__init__(f"the manifest {where} is not usable: {shown}")
        self.problems = tuple(problems)


class OutputKeyError(InputError):
    """An output name that would land outside the output directory."""


def relative_key(key: str, prefix: str) -> str:
    """``key`` relative to the directory part of ``prefix`` (up to and including its last ``/``).

    ``relative_key("in/a/x.csv", "in/")`` and ``relative_key("in/a/x.csv", "in/a")`` give
    ``"a/x.csv"``; a prefix without ``/`` keeps the whole key.
    """
    directory = prefix[: prefix.rfind("/") + 1]
    if not key.startswith(directory):
        raise ValueError(f"{key!r} does not lie under {directory!r}")
    return key[len(directory) :]


def output_uri(relative: str, output: DataUri) -> DataUri:
    """Where the output of the input with ``relative`` key goes: ``<output>/<relative>.out``.

    Exactly one ``/`` joins the output path and the key (a key's own leading or doubled
    ``/`` are kept: in S3 they are part of the name). A local output that would escape
    the output directory (through ``..`` or an absolute key) raises ``OutputKeyError``.
    """
    base = output.key.rstrip("/")
    name = f"{relative}.out"
    if output.scheme == "s3":
        return DataUri("s3", output.bucket, f"{base}/{name}" if base else name)
    directory = base + "/"
    path = posixpath.normpath(f"{directory}{name}")
    if not path.startswith(directory):
        raise OutputKeyError(
            f"the output of {relative!r} would be written to {path}, outside the output "
            f"directory {directory}; rename the input or fix its manifest entry"
        )
    return DataUri("file", "", path)


def exclusions(inputs: DataUri, others: Sequence[DataUri]) -> tuple[str, ...]:
    """Key prefixes of ``others`` (output path, state prefix) in the same bucket, with one ``/``.

    Excluding them is harmless when they do not overlap the inputs, and required when they
    do: ``s3://b/data`` would otherwise list ``s3://b/data-out/x.csv.out`` as an input.
    """
    found: list[str] = []
    for other in others:
        if (other.scheme, other.bucket) == (inputs.scheme, inputs.bucket):
            base = other.key.rstrip("/")
            if base:
                found.append(base + "/")
    return tuple(found)


async def list_inputs(
    stores: Stores,
    data_type: Literal["S3Prefix", "ManifestFile"],
    uri: DataUri,
    *,
    exclude: Sequence[DataUri] = (),
) -> list[InputFile]:
    """The job's inputs in processing order: sorted by key, or in manifest order.

    ``exclude`` are the output path and the state prefix (see ``exclusions``). An empty
    list is the caller's to report ("no objects found under …"). Raises ``ManifestError``
    for a malformed manifest and ``StorageError`` when the store cannot be read.
    """
    if data_type == "ManifestFile":
        return await _manifest_inputs(stores, uri)
    store = await stores.get(uri)
    base = uri.key
    if uri.is_local and await asyncio.to_thread(os.path.isdir, base):
        base = base.rstrip("/") + "/"  # a local directory means its contents (local.py)
    found = await store.list_objects(uri.key, exclude=exclusions(uri, exclude))
    return [
        InputFile(DataUri(uri.scheme, uri.bucket, info.key), relative_key(info.key, base), info)
        for info in found
    ]


def parse_manifest(data: bytes, where: DataUri) -> tuple[DataUri, list[str]]:
    """The prefix and the relative keys of a manifest; ``ManifestError`` lists every problem.

    A local manifest may name a local prefix (absolute, ``file://`` or relative to the
    manifest's directory) or an S3 one; an S3 manifest must name an ``s3://`` prefix.
    """
    shape = 'a JSON array whose first element is {"prefix": "s3://bucket/prefix/"}'
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ManifestError(str(where), [f"it is not valid JSON ({error})"]) from None
    if not isinstance(document, list) or not document:
        raise ManifestError(str(where), [f"it must be {shape}, followed by keys"])
    problems: list[str] = []
    prefix: DataUri | None = None
    head = document[0]
    text = head.get("prefix") if isinstance(head, dict) and len(head) == 1 else None
    if not isinstance(text, str):
        problems.append(f'element 0 must be {{"prefix": "s3://bucket/prefix/"}}, not {_show(head)}')
    else:
        try:
            prefix = parse_data_uri(text, posixpath.dirname(where.key) if where.is_local else "/")
        except ValueError as error:
            problems.append(f"element 0: the prefix is not usable: {error}")
        else:
            if not where.is_local and prefix.is_local:
                problems.append(f"element 0: an S3 manifest needs an s3:// prefix, not {text!r}")
    keys: list[str] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(document[1:], start=1):
        if not isinstance(entry, str) or not entry or "\x00" in entry:
            problems.append(f"element {index} must be a non-empty key string, not {_show(entry)}")
        elif entry in seen:
            problems.append(f"element {index} repeats element {seen[entry]} ({entry!r})")
        else:
            seen[entry] = index
        keys.append(entry if isinstance(entry, str) else "")
    if problems or prefix is None:
        raise ManifestError(str(where), problems)
    return prefix, keys


def _show(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


async def _manifest_inputs(stores: Stores, where: DataUri) -> list[InputFile]:
    store = await stores.get(where)
    found = await store.get_bytes(where.key)
    if found is None:
        raise InputError(f"the manifest {where} does not exist; check S3Uri")
    prefix, keys = parse_manifest(found[0], where)
    objects = await stores.get(prefix)
    limit = asyncio.Semaphore(stores.settings.head_in_flight)

    async def look_up(index: int, entry: str) -> InputFile:
        key = prefix.key + entry
        if prefix.is_local:
            key = posixpath.normpath(key)
        async with limit:
            try:
                info = await objects.head(key)
            except StorageError as error:
                raise StorageError(f"{error} (manifest element {index})") from error
        return InputFile(DataUri(prefix.scheme, prefix.bucket, key), entry, info, index)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(look_up(i, key)) for i, key in enumerate(keys, start=1)]
    except BaseExceptionGroup as failed:  # the first failure, as a plain StorageError
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
