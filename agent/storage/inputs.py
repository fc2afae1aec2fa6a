"""Which objects are a job's inputs (docs/design.md §1.3), and where each one's output goes (§1.9).

``list_inputs`` turns an ``S3Prefix`` or a ``ManifestFile`` into :class:`InputFile`
records: the object's location, its listed version, and the relative key that names its
output. ``output_uri`` is the pure naming rule, ``relative_key``, ``exclusions`` and
``is_agent_output`` the pieces of the listing rule, so the runner and the tests share one
definition. :class:`ListingSource` says what a listing is a listing of (its fingerprint is
stored with the snapshot). ``name_outputs`` gives each file of a run its output name once
(or the reason it has none), and marks inputs whose outputs would share one name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from agent.job import DataUri
from agent.storage.base import InputError, ObjectInfo, StorageError, StorageSettings, Store
from agent.storage.manifest import entry_keys, parse_manifest

log = logging.getLogger("agent.inputs")

# What the agent itself writes under the output path, by name ending: these are never
# inputs, whatever the prefixes. Add the suffix of any new per-file output here.
OUTPUT_SUFFIXES: tuple[str, ...] = (".out", ".errors.jsonl")
STATE_DIRECTORY = "_bt-agent"  # <S3OutputPath>/_bt-agent/: the default state roots of all jobs
# Bumped whenever the rule above (what is excluded, how keys are resolved) changes, so a
# snapshot taken under another rule is never joined.
LISTING_RULE = 3


class StoreLookup(Protocol):
    """What listing needs of ``agent.storage.Stores`` (a protocol, so this module does not
    import the package that imports it): the store of a location, and the settings."""

    settings: StorageSettings

    async def get(self, uri: DataUri) -> Store: ...


def file_id(uri: DataUri | str) -> str:
    """The name of a file's state objects: a digest of its input URI (keys may hold anything)."""
    return hashlib.sha256(str(uri).encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Shard:
    """A byte range of one big input, a unit of work of its own (README "Shards").

    ``start``/``end`` are nominal: the shard takes the records that *start* in
    ``[first boundary at or after start, end)``. ``begin`` is set only when the shard is
    redone from where its predecessor's last record ended (the start is then known).
    """

    index: int  # 0-based, in file order
    count: int  # shards of the file
    start: int
    end: int
    begin: int | None = None

    @property
    def name(self) -> str:
        """The range as it names the shard's state objects: ``<start>-<end>``."""
        return f"{self.start}-{self.end}"

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input object and the name of its output.

    ``info`` is the object as listed (size and ETag, the version to read), or ``None``
    for a manifest entry whose object does not exist (that file fails, the job goes on).
    ``output`` is where its output goes, or ``None`` with ``output_error`` saying why the
    name is refused; both are set once, by ``name_outputs``, when the run's listing is
    opened, and read by everyone after (never worked out again).
    """

    uri: DataUri  # the object itself
    relative_key: str  # the output is <S3OutputPath>/<relative_key>.out
    info: ObjectInfo | None
    manifest_index: int | None = None  # the entry's index in the manifest's JSON array
    # Why this file fails without being read (its output name is another input's), or None.
    problem: str | None = None
    shard: Shard | None = None  # a byte range of the object (a unit of its own), or None
    id: str = field(init=False, repr=False, compare=False)  # file_id(uri), computed once
    output: DataUri | None = field(init=False, default=None, repr=False, compare=False)
    output_error: str | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        fid = file_id(self.uri)
        object.__setattr__(self, "id", fid if self.shard is None else f"{fid}.{self.shard.name}")

    @property
    def file(self) -> str:
        """The id of the whole file (a shard's file, or this file)."""
        return self.id if self.shard is None else self.id.split(".", 1)[0]

    @property
    def weight(self) -> int:
        """The bytes this unit weighs in the plan (a missing manifest entry weighs nothing)."""
        if self.shard is not None:
            return self.shard.size
        return self.info.size if self.info is not None else 0

    def where(self) -> str:
        """``" (manifest element N)"`` for a manifest entry, else nothing."""
        return "" if self.manifest_index is None else f" (manifest element {self.manifest_index})"

    def missing_message(self) -> str:
        """Why a missing manifest entry failed, as users should see it."""
        return (
            f"{self.uri} does not exist (manifest element {self.manifest_index}, "
            f"{self.relative_key!r}); remove it from the manifest or upload the object"
        )


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


def errors_uri(output: DataUri) -> DataUri:
    """The errors file beside an output: ``<name>.errors.jsonl`` for ``<name>.out``."""
    stem = output.key[: -len(".out")] if output.key.endswith(".out") else output.key
    return DataUri(output.scheme, output.bucket, f"{stem}.errors.jsonl")


def _directory(uri: DataUri) -> str | None:
    base = uri.key.rstrip("/")
    return base + "/" if base else None


def exclusions(inputs: DataUri, others: Sequence[DataUri]) -> tuple[str, ...]:
    """Key prefixes of ``others`` (state prefixes) in the same bucket, with one ``/``.

    Everything under them is the agent's own: excluding them is harmless when they do not
    overlap the inputs, and required when they do.
    """
    found: list[str] = []
    for other in others:
        if (other.scheme, other.bucket) == (inputs.scheme, inputs.bucket):
            directory = _directory(other)
            if directory is not None:
                found.append(directory)
    return tuple(found)


def is_agent_output(key: str, output: DataUri) -> bool:
    """Whether ``key`` (in ``output``'s bucket) may be something the agent wrote there.

    Only that is left out of an ``S3Prefix`` listing, not the whole output path: an output
    path *above* the input prefix (input ``s3://b/proj/in/``, output ``s3://b/proj/``) must
    not hide the inputs, and one under it must not list the outputs of an earlier run.
    """
    directory = _directory(output)
    under = directory is None or key.startswith(directory)
    return under and key.endswith(OUTPUT_SUFFIXES)


@dataclass(frozen=True, slots=True)
class ListingSource:
    """Everything that decides what a listing holds; ``fingerprint`` names it.

    A snapshot is joined only by a start whose source has the same fingerprint: another
    ``S3Uri``, data type, output path, state prefix, listing rule or (for a manifest)
    another version of the manifest object means another listing.
    """

    data_type: str
    input: DataUri
    output: DataUri
    state: DataUri
    manifest_etag: str | None = None

    def stored_fields(self) -> dict[str, Any]:
        """The source's fields as stored in ``listing.json`` (``Source``), for people, logs
        and the fingerprint."""
        described: dict[str, Any] = {
            "DataType": self.data_type,
            "S3Uri": str(self.input),
            "S3OutputPath": str(self.output),
            "StateUri": str(self.state),
            "OutputSuffixes": list(OUTPUT_SUFFIXES),
            "ListingRule": LISTING_RULE,
        }
        if self.manifest_etag is not None:
            described["ManifestETag"] = self.manifest_etag
        return described

    @property
    def fingerprint(self) -> str:
        canonical = orjson.dumps(self.stored_fields(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()

    @classmethod
    async def of(
        cls,
        stores: StoreLookup,
        data_type: str,
        uri: DataUri,
        output: DataUri,
        state: DataUri,
    ) -> ListingSource:
        """The source of a job's listing now: for a manifest, one HEAD for its ETag.

        Raises ``InputError`` when the manifest does not exist.
        """
        etag = None
        if data_type == "ManifestFile":
            info = await (await stores.get(uri)).head(uri.key)
            if info is None:
                raise InputError(f"the manifest {uri} does not exist; check S3Uri")
            etag = info.etag
        return cls(data_type, uri, output, state, etag)


def name_outputs(files: Sequence[InputFile], output: DataUri) -> dict[str, str]:
    """Give each of ``files`` its output name, once, as its run's listing is opened.

    Sets each file's ``output`` (``output_uri``), or its ``output_error`` when the name is
    refused (``OutputKeyError``: the pipeline fails that file with the reason), then marks
    each file whose output name an earlier file's has (``output_collisions``) with that
    ``problem``. The files are changed in place, before anyone else reads them (a listing
    of a million files is not copied for it). Returns the collisions: file id -> reason.
    """
    for item in files:
        try:
            object.__setattr__(item, "output", output_uri(item.relative_key, output))
        except OutputKeyError as error:
            object.__setattr__(item, "output_error", str(error))
    refused = output_collisions(files, output)
    for item in files:
        if (problem := refused.get(item.id)) is not None:
            object.__setattr__(item, "problem", problem)
    return refused


def output_collisions(files: Iterable[InputFile], output: DataUri) -> dict[str, str]:
    """Inputs whose output would have the name of an earlier input's: file id -> reason.

    ``files`` carry their output names (``name_outputs``). The first input (in listing
    order) keeps the name; each later one fails with a reason naming both. Only local
    outputs (under ``output``) can collide: their names are normalised paths (``wk//x.csv``,
    ``./x.csv`` and ``sub/../x.csv`` all give ``x.csv.out``), while S3 keys are kept as they
    are and the listing never holds one relative key twice.
    """
    if output.scheme == "s3":
        return {}
    first: dict[str, InputFile] = {}
    refused: dict[str, str] = {}
    for item in files:
        out = item.output
        if out is None:
            continue  # refused anyway, with its own reason
        other = first.setdefault(out.key, item)
        if other is not item:
            refused[item.id] = (
                f"{item.uri}{item.where()}: not transformed: its output {out} is also the "
                f"output of {other.uri}{other.where()}, which comes first in the listing and "
                "keeps it; rename one of the two inputs (or remove one from the manifest)"
            )
    return refused


async def list_inputs(
    stores: StoreLookup,
    data_type: Literal["S3Prefix", "ManifestFile"],
    uri: DataUri,
    *,
    exclude: Sequence[DataUri] = (),
    manifest_etag: str | None = None,
) -> list[InputFile]:
    """The job's inputs in processing order: sorted by key, or in manifest order.

    ``exclude`` are the output path, then any state prefixes: left out are the agent's
    outputs under the output path (``is_agent_output``), its ``_bt-agent/`` state directory
    there, and everything under the state prefixes (see ``exclusions``); local temporary
    names are never listed (``agent.storage.local``). An empty list is the caller's to
    report ("no objects found under …"). Raises ``ManifestError`` for a malformed manifest,
    ``InputError`` for a missing one or one whose ETag is no longer ``manifest_etag`` (when
    given), and ``StorageError`` when the store cannot be read.
    """
    if data_type == "ManifestFile":
        return await _manifest_inputs(stores, uri, manifest_etag)
    store = await stores.get(uri)
    base = uri.key
    if uri.is_local and await asyncio.to_thread(os.path.isdir, base):
        base = base.rstrip("/") + "/"  # a local directory means its contents (local.py)
    output = exclude[0] if exclude else None
    states = list(exclude[1:])
    if output is not None:
        states.append(output.join(STATE_DIRECTORY, directory=True))
    found = await store.list_objects(uri.key, exclude=exclusions(uri, states))
    # The agent's outputs can be among the listed keys only when the output is in this bucket.
    outputs_here = (
        output
        if output is not None and (output.scheme, output.bucket) == (uri.scheme, uri.bucket)
        else None
    )
    return [
        InputFile(DataUri(uri.scheme, uri.bucket, info.key), relative_key(info.key, base), info)
        for info in found
        if outputs_here is None or not is_agent_output(info.key, outputs_here)
    ]


async def _manifest_inputs(
    stores: StoreLookup, where: DataUri, expected_etag: str | None = None
) -> list[InputFile]:
    """One ``InputFile`` per manifest entry, in order; a bounded number of lookups at once.

    ``head_in_flight`` workers take entries from one iterator, so the tasks alive (and the
    memory they hold) do not grow with the manifest, and a cancellation ends them at once.
    """
    store = await stores.get(where)
    found = await store.get_bytes(where.key)
    if found is None:
        raise InputError(f"the manifest {where} does not exist; check S3Uri")
    if expected_etag is not None and found[1] != expected_etag:
        raise InputError(
            f"the manifest {where} changed while the listing was taken (ETag {expected_etag} "
            f"then {found[1]}); run the job again"
        )
    prefix, entries = parse_manifest(found[0], where)
    del found
    keys = entry_keys(prefix, entries, where)
    objects = await stores.get(prefix)
    log.info("looking up the %d entries of the manifest %s under %s", len(entries), where, prefix)
    files: list[InputFile | None] = [None] * len(entries)
    todo = iter(range(len(entries)))

    async def look_up() -> None:
        for position in todo:  # shared by the workers: each entry is taken once
            key = keys[position]
            try:
                info = await objects.head(key)
            except StorageError as error:
                raise StorageError(f"{error} (manifest element {position + 1})") from error
            uri = DataUri(prefix.scheme, prefix.bucket, key)
            files[position] = InputFile(uri, entries[position], info, position + 1)

    workers = min(stores.settings.head_in_flight, len(entries))
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(look_up())
    except BaseExceptionGroup as failed:  # the first failure, as a plain StorageError
        raise failed.exceptions[0] from None
    return [item for item in files if item is not None]
