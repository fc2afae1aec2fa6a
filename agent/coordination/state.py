"""The state prefix (SPEC §6): listing snapshot, completion records and the job summary.

Layout under ``Agent.StateUri`` (default ``<S3OutputPath>/_bt-agent/<TransformJobName>/``)::

    listing.json             the run's listing snapshot: RunId, every input's key, size, ETag
    done/<file-id>.json      one record per finished file (Completed or Failed), written only
                             after the file's .out was committed
    leases/<file-id>.json    Lease coordination: who holds which file (agent.coordination.lease)
    uploads/<file-id>/<h>.json  one per open multipart upload, so orphans can be aborted
    probe/<token>.json       the start-up check of conditional writes (deleted at once)
    summary.json             the job summary, DescribeTransformJob-like, with RunId

``<file-id>`` is a digest of the input's URI. A *run* is one listing snapshot: instances that
start while it has no summary join it, if their job lists the same source (its fingerprint,
see ``ListingSource``); once a summary names its RunId, or when a start's job lists another
source, that instance takes a new snapshot in its place (a rerun), and completion records
carry over between runs: a file completed with the same input ETag and settings hash is
skipped.

``listing.json``, completion batches and ``summary.json`` grow with the number of files:
they are written as compact JSON, and a listing entry holds only what differs from file to
file (``[relative key, size, ETag]``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from agent.job.types import DataUri
from agent.redact import dumps_scrubbed
from agent.report import COMPLETED, FAILED
from agent.storage.base import (
    ObjectInfo,
    ObjectTooLargeError,
    PreconditionFailed,
    StorageError,
    Store,
)
from agent.storage.inputs import InputFile, ListingSource

log = logging.getLogger("agent.state")

IN_PROGRESS = "InProgress"
FINAL_STATUSES = (COMPLETED, FAILED)
STATE_FORMAT = 1  # "Format" in every state object; bumped on an incompatible change
READS_IN_FLIGHT = 32  # state objects fetched at once
SUMMARY_CHUNK_BYTES = 1 << 20  # summary.json is uploaded in pieces of this size


class StateError(StorageError):
    """A state object is unreadable or from an incompatible agent; the message says which."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Where each state object lives under the state prefix ``root``."""

    root: DataUri

    def _at(self, *parts: str, directory: bool = False) -> DataUri:
        return self.root.join(*parts, directory=directory)

    @property
    def listing(self) -> DataUri:
        return self._at("listing.json")

    @property
    def summary(self) -> DataUri:
        return self._at("summary.json")

    @property
    def done_prefix(self) -> DataUri:
        return self._at("done", directory=True)

    def done(self, fid: str) -> DataUri:
        return self._at("done", f"{fid}.json")

    @property
    def leases_prefix(self) -> DataUri:
        return self._at("leases", directory=True)

    def lease(self, fid: str) -> DataUri:
        return self._at("leases", f"{fid}.json")

    def uploads_prefix(self, fid: str | None = None) -> DataUri:
        return self._at("uploads", *([fid] if fid else []), directory=True)

    def upload(self, fid: str, upload_id: str) -> DataUri:
        return self._at(
            "uploads", fid, f"{hashlib.sha256(upload_id.encode()).hexdigest()[:32]}.json"
        )

    def probe(self, token: str) -> DataUri:
        return self._at("probe", f"{token}.json")


def dumps(document: Mapping[str, Any], *, compact: bool = False) -> bytes:
    """A state object's bytes: indented for people, or ``compact`` for ones that grow with
    the number of files. Secrets are out of free-text fields (``agent.redact``); a document
    holding none (the usual case, a listing of any size) is serialised once."""
    return dumps_scrubbed(document, 0 if compact else orjson.OPT_INDENT_2) + b"\n"


def loads(data: bytes, where: DataUri) -> dict[str, Any]:
    """A state object's JSON; ``StateError`` if it is not a JSON object of our format."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise StateError(f"{where} is not valid JSON ({error}); delete it to start over") from None
    if not isinstance(document, dict) or document.get("Format") != STATE_FORMAT:
        raise StateError(
            f"{where} was not written by this version of bt-agent (Format "
            f"{document.get('Format') if isinstance(document, dict) else '?'}, expected "
            f"{STATE_FORMAT}); use another Agent.StateUri or delete the state prefix"
        )
    return document


# ---------------------------------------------------------------------- listing snapshot


@dataclass(frozen=True, slots=True)
class Listing:
    """One run's listing snapshot: the files every instance plans over.

    ``fingerprint`` names what it is a listing of (``ListingSource.fingerprint``);
    ``source`` is that source described, as stored.
    """

    run_id: str
    created_at: str
    files: tuple[InputFile, ...]
    etag: str | None = None  # of listing.json; None for a snapshot not stored (no inputs)
    fingerprint: str | None = None
    source: Mapping[str, Any] | None = field(default=None, compare=False)

    def to_json(self, job_name: str) -> bytes:
        """``listing.json``: the shared parts once, then ``[relative key, size, ETag]`` per
        file, with a fifth element only for what differs from the shared parts."""
        first = self.files[0] if self.files else None
        scheme = first.uri.scheme if first else "s3"
        bucket = first.uri.bucket if first else ""
        key_prefix = ""
        if first is not None and first.uri.key.endswith(first.relative_key):
            key_prefix = first.uri.key[: len(first.uri.key) - len(first.relative_key)]
        manifest = first is not None and first.manifest_index is not None
        entries: list[list[Any]] = []
        for position, f in enumerate(self.files):
            entry: list[Any] = [
                f.relative_key,
                None if f.info is None else f.info.size,
                None if f.info is None else f.info.etag,
            ]
            odd: dict[str, Any] = {}
            if f.uri.key != key_prefix + f.relative_key:
                odd["Key"] = f.uri.key
            if (f.uri.scheme, f.uri.bucket) != (scheme, bucket):
                odd["Scheme"], odd["Bucket"] = f.uri.scheme, f.uri.bucket
            if f.manifest_index != (position + 1 if manifest else None):
                odd["ManifestIndex"] = f.manifest_index
            if odd:
                entry.append(odd)
            entries.append(entry)
        document = {
            "Format": STATE_FORMAT,
            "TransformJobName": job_name,
            "RunId": self.run_id,
            "CreatedAt": self.created_at,
            "Fingerprint": self.fingerprint,
            "Source": self.source,
            "Scheme": scheme,
            "Bucket": bucket,
            "KeyPrefix": key_prefix,
            "Manifest": manifest,
            "Files": entries,
        }
        return dumps(document, compact=True)

    @classmethod
    def from_json(cls, data: bytes, etag: str, where: DataUri) -> Listing:
        return cls.from_document(loads(data, where), etag, where)

    @classmethod
    def from_document(cls, document: Mapping[str, Any], etag: str, where: DataUri) -> Listing:
        try:
            if "KeyPrefix" not in document:
                files = tuple(_old_entry(e) for e in document["Files"])
            else:
                shared = (
                    document["Scheme"],
                    document["Bucket"],
                    document["KeyPrefix"],
                    bool(document["Manifest"]),
                )
                files = tuple(_entry(e, i, *shared) for i, e in enumerate(document["Files"]))
            return cls(
                str(document["RunId"]),
                str(document["CreatedAt"]),
                files,
                etag,
                document.get("Fingerprint"),
                document.get("Source"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise StateError(
                f"{where} is not a listing snapshot ({type(error).__name__}: {error}); "
                "delete it to take a new listing"
            ) from None

    @property
    def total_bytes(self) -> int:
        return sum(f.info.size for f in self.files if f.info is not None)


def _entry(
    entry: Sequence[Any], position: int, scheme: str, bucket: str, key_prefix: str, manifest: bool
) -> InputFile:
    relative, size, etag = entry[0], entry[1], entry[2]
    odd: Mapping[str, Any] = entry[3] if len(entry) > 3 else {}
    key = odd.get("Key", key_prefix + relative)
    uri = DataUri(odd.get("Scheme", scheme), odd.get("Bucket", bucket), key)
    index = odd.get("ManifestIndex", position + 1 if manifest else None)
    return InputFile(uri, relative, None if size is None else ObjectInfo(key, size, etag), index)


def _old_entry(e: Mapping[str, Any]) -> InputFile:
    """An entry of a listing written before listings named their source (one dict a file)."""
    info = None if e["Size"] is None else ObjectInfo(e["Key"], e["Size"], e["ETag"])
    return InputFile(
        DataUri(e["Scheme"], e["Bucket"], e["Key"]), e["RelativeKey"], info, e["ManifestIndex"]
    )


async def read_listing(store: Store, layout: StateLayout) -> Listing | None:
    found = await store.get_bytes(layout.listing.key)
    return None if found is None else Listing.from_json(found[0], found[1], layout.listing)


def _changes(stored: object, now: Mapping[str, Any] | None) -> str:
    """What differs between a stored listing's ``Source`` and this start's, for the log."""
    if not isinstance(stored, Mapping):
        return "the snapshot does not say what it lists (an older bt-agent took it)"
    now = now or {}
    changed = [
        f"{name} {stored.get(name)!r} -> {now.get(name)!r}"
        for name in sorted(set(stored) | set(now))
        if stored.get(name) != now.get(name)
    ]
    return "; ".join(changed) or "its fingerprint differs"


JOIN, ENDED, OTHER_SOURCE = "join", "ended", "other source"


def snapshot_verdict(
    run_id: object,
    fingerprint: object,
    summary: Mapping[str, Any] | None,
    wanted: str | None,
) -> str:
    """What a start does with a stored snapshot (``run_id``, ``fingerprint``), given the
    stored summary's head and the fingerprint of the source it lists now.

    ``ENDED``: a summary names the run, so it has ended (a new snapshot is taken);
    ``JOIN``: it is unfinished and lists the same source; ``OTHER_SOURCE``: it is
    unfinished but lists something else (a new snapshot replaces it). ``open_listing``
    and the ``bt-agent plan`` view decide by this alone.
    """
    if summary is not None and summary.get("RunId") == run_id:
        return ENDED
    return JOIN if fingerprint == wanted else OTHER_SOURCE


async def open_listing(
    store: Store,
    layout: StateLayout,
    job_name: str,
    list_inputs: Callable[[], Awaitable[Sequence[InputFile]]],
    source: ListingSource | None = None,
) -> tuple[Listing, bool]:
    """The current run's snapshot, and whether this instance created it.

    An unfinished run (no summary names its RunId) is joined as it is when it was listed
    from the same ``source`` (the same fingerprint). Otherwise (no snapshot, a finished
    run, or an unfinished one listed from something else: a crash's leftover, a changed
    ``S3Uri`` or manifest) this instance lists the inputs and writes a new snapshot, with
    ``If-None-Match: *`` or ``If-Match`` on the replaced snapshot's ETag; when another
    instance wins that race, its snapshot is read and used, so all that list the same
    source plan over the same one. No inputs: an empty, unstored snapshot (the caller
    fails the job).
    """
    fingerprint = None if source is None else source.fingerprint
    described = None if source is None else source.stored_fields()
    fresh: Sequence[InputFile] | None = None
    for _ in range(8):
        found = await store.get_bytes(layout.listing.key)
        if found is not None:
            document = loads(found[0], layout.listing)
            run_id = document.get("RunId")
            summary = await read_summary_head(store, layout)
            verdict = snapshot_verdict(run_id, document.get("Fingerprint"), summary, fingerprint)
            if verdict == ENDED:
                log.info("the run %s has ended; taking a new listing snapshot", run_id)
            elif verdict == JOIN:
                return Listing.from_document(document, found[1], layout.listing), False
            else:
                log.warning(
                    "the unfinished run %s was listed from another source (%s); taking a new "
                    "listing snapshot in its place (completed files are still skipped while "
                    "unchanged)",
                    run_id,
                    _changes(document.get("Source"), described),
                )
            del document
        if fresh is None:
            fresh = await list_inputs()
        listing = Listing(
            secrets.token_hex(8), now_iso(), tuple(fresh), None, fingerprint, described
        )
        if not fresh:
            return listing, False
        try:
            etag = await store.put_bytes(
                layout.listing.key,
                listing.to_json(job_name),
                if_none_match=found is None,
                if_match=None if found is None else found[1],
            )
        except PreconditionFailed:
            continue  # another instance wrote one first: read and use it
        return replace(listing, etag=etag), True
    raise StateError(f"{layout.listing} kept changing while this instance tried to read it")


# ---------------------------------------------------------------------- job summary


async def read_summary(store: Store, layout: StateLayout) -> dict[str, Any] | None:
    found = await store.get_bytes(layout.summary.key)
    return None if found is None else loads(found[0], layout.summary)


async def read_summary_head(store: Store, layout: StateLayout) -> dict[str, Any] | None:
    """The stored summary without its per-file entries (run, status, counts), or ``None``.

    Raises ``StateError`` when the stored object is not a summary this agent can read.
    """
    found = await _stored_summary_head(store, layout, strict=True)
    return None if found is None else found[0]


async def _stored_summary_head(
    store: Store, layout: StateLayout, *, strict: bool
) -> tuple[dict[str, Any] | None, str] | None:
    """The stored summary's fields before its entries and its ETag; ``None``: no summary.

    A summary too large for ``get_bytes`` (a job of hundreds of thousands of files) is
    read from its first ``SUMMARY_HEAD_BYTES`` only: a compact summary puts the run, the
    status and the counts before its ``Files``. An object that is no readable summary
    gives ``None`` in place of the fields, or ``StateError`` when ``strict``.
    """
    where = layout.summary
    try:
        found = await store.get_bytes(where.key)
    except ObjectTooLargeError:
        info = await store.head(where.key)
        if info is None:
            return None
        data = bytearray()
        async with store.read(info, 0, min(info.size, SUMMARY_HEAD_BYTES)) as chunks:
            async for chunk in chunks:
                data += chunk
        head = _head_before_files(bytes(data))
        if head is None and strict:
            raise StateError(
                f"{where} is {info.size} bytes and its first {SUMMARY_HEAD_BYTES} do not "
                "hold a summary's run and status; delete it to start over"
            ) from None
        return head, info.etag
    if found is None:
        return None
    try:
        return summary_head_of(found[0], where), found[1]
    except StateError:
        if strict:
            raise
        return None, found[1]


_FILES_KEY = b',"Files":['
SUMMARY_HEAD_BYTES = 64 << 10  # where a large summary's run, status and counts are read


def _head_before_files(data: bytes) -> dict[str, Any] | None:
    """The fields of a compact summary before its ``Files``, or ``None`` if not so laid out."""
    at = data.find(_FILES_KEY)
    if at <= 0:
        return None
    try:
        head = orjson.loads(data[:at] + b"}")
    except orjson.JSONDecodeError:
        return None
    if isinstance(head, dict) and head.get("Format") == STATE_FORMAT and "RunId" in head:
        return head
    return None


def summary_head_of(data: bytes, where: DataUri) -> dict[str, Any]:
    """The fields a compact ``summary.json`` has before its ``Files`` (which come after
    the run, status and counts), parsed without the entries; the whole document when it
    is not laid out so (an indented one of an older agent, say)."""
    head = _head_before_files(data)
    return head if head is not None else loads(data, where)


async def write_summary(
    store: Store,
    layout: StateLayout,
    summary: Mapping[str, Any],
    pieces: Callable[[], Iterable[bytes]] | None = None,
) -> bool:
    """Store ``summary`` unless a final one for the same run is there; ``True`` if written.

    ``pieces`` gives its bytes a piece at a time (as ``dumps(summary, compact=True)`` would
    give them whole): they are uploaded as they come, in chunks of ``SUMMARY_CHUNK_BYTES``,
    so a summary of a million files is never held whole.

    Conditional on what was read, so two instances finishing at once write it once.
    """
    found = await _stored_summary_head(store, layout, strict=False)
    if found is not None and found[0] is not None:
        existing = found[0]
        final = existing.get("TransformJobStatus") in FINAL_STATUSES
        if existing.get("RunId") == summary["RunId"] and final:
            return False
    etag = None if found is None else found[1]
    del found
    fresh = etag is None
    try:
        if pieces is None:
            data = dumps(summary, compact=True)
            await store.put_bytes(layout.summary.key, data, if_none_match=fresh, if_match=etag)
            return True
        async with store.open_upload(layout.summary.key) as upload:
            chunk = bytearray()
            for piece in pieces():
                chunk += piece
                if len(chunk) >= SUMMARY_CHUNK_BYTES:
                    await upload.write(bytes(chunk))
                    chunk.clear()
            await upload.write(bytes(chunk))
            await upload.commit(if_none_match=fresh, if_match=etag)
    except PreconditionFailed:
        return False  # another instance wrote it meanwhile
    return True
