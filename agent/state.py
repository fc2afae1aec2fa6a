"""The state prefix (SPEC §6): listing snapshot, completion records and the job summary.

Layout under ``Agent.StateUri`` (default ``<S3OutputPath>/_bt-agent/<TransformJobName>/``)::

    listing.json             the run's listing snapshot: RunId, every input's key, size, ETag
    done/<file-id>.json      one record per finished file (Completed or Failed), written only
                             after the file's .out was committed
    leases/<file-id>.json    Lease coordination: who holds which file (agent.lease)
    uploads/<file-id>/<h>.json  one per open multipart upload, so orphans can be aborted
    probe/<token>.json       the start-up check of conditional writes (deleted at once)
    summary.json             the job summary, DescribeTransformJob-like, with RunId

``<file-id>`` is a digest of the input's URI. A *run* is one listing snapshot: instances that
start while it has no summary join it; once a summary names its RunId, the next instance
to start takes a new snapshot (a rerun), and completion records carry over between runs:
a file completed with the same input ETag and settings hash is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from agent._jobtypes import DataUri
from agent.redact import scrub_state
from agent.report import COMPLETED, FAILED
from agent.storage._base import ObjectInfo, PreconditionFailed, StorageError, Store
from agent.storage.inputs import InputFile

log = logging.getLogger("agent.state")

IN_PROGRESS = "InProgress"
FINAL_STATUSES = (COMPLETED, FAILED)
STATE_FORMAT = 1  # "Format" in every state object; bumped on an incompatible change
READS_IN_FLIGHT = 32  # state objects fetched at once


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


def dumps(document: Mapping[str, Any]) -> bytes:
    document = scrub_state(document)  # secrets out of free-text fields (agent.redact)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


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
    """One run's listing snapshot: the files every instance plans over."""

    run_id: str
    created_at: str
    files: tuple[InputFile, ...]
    etag: str | None = None  # of listing.json; None for a snapshot not stored (no inputs)

    def to_json(self, job_name: str) -> bytes:
        entries = [
            {
                "Scheme": f.uri.scheme,
                "Bucket": f.uri.bucket,
                "Key": f.uri.key,
                "RelativeKey": f.relative_key,
                "Size": None if f.info is None else f.info.size,
                "ETag": None if f.info is None else f.info.etag,
                "ManifestIndex": f.manifest_index,
            }
            for f in self.files
        ]
        document = {"Format": STATE_FORMAT, "TransformJobName": job_name, "RunId": self.run_id}
        return dumps({**document, "CreatedAt": self.created_at, "Files": entries})

    @classmethod
    def from_json(cls, data: bytes, etag: str, where: DataUri) -> Listing:
        document = loads(data, where)
        try:
            files = tuple(
                InputFile(
                    DataUri(e["Scheme"], e["Bucket"], e["Key"]),
                    e["RelativeKey"],
                    None if e["Size"] is None else ObjectInfo(e["Key"], e["Size"], e["ETag"]),
                    e["ManifestIndex"],
                )
                for e in document["Files"]
            )
            return cls(str(document["RunId"]), str(document["CreatedAt"]), files, etag)
        except (KeyError, TypeError) as error:
            raise StateError(f"{where} lacks {error}; delete it to take a new listing") from None

    @property
    def total_bytes(self) -> int:
        return sum(f.info.size for f in self.files if f.info is not None)


async def read_listing(store: Store, layout: StateLayout) -> Listing | None:
    found = await store.get_bytes(layout.listing.key)
    return None if found is None else Listing.from_json(found[0], found[1], layout.listing)


async def open_listing(
    store: Store,
    layout: StateLayout,
    job_name: str,
    list_inputs: Callable[[], Awaitable[Sequence[InputFile]]],
) -> tuple[Listing, bool]:
    """The current run's snapshot, and whether this instance created it.

    An unfinished run (no summary names its RunId) is joined as it is. Otherwise this
    instance lists the inputs and writes a new snapshot, with ``If-None-Match: *`` (or
    ``If-Match`` on the finished run's ETag); when another instance wins that race, its
    snapshot is read and used, so all plan over the same one. No inputs: an empty,
    unstored snapshot (the caller fails the job).
    """
    fresh: Sequence[InputFile] | None = None
    for _ in range(8):
        current = await read_listing(store, layout)
        if current is not None:
            summary = await read_summary(store, layout)
            if summary is None or summary.get("RunId") != current.run_id:
                return current, False
            log.info("the run %s has ended; taking a new listing snapshot", current.run_id)
        if fresh is None:
            fresh = await list_inputs()
        listing = Listing(secrets.token_hex(8), now_iso(), tuple(fresh))
        if not fresh:
            return listing, False
        try:
            etag = await store.put_bytes(
                layout.listing.key,
                listing.to_json(job_name),
                if_none_match=current is None,
                if_match=None if current is None else current.etag,
            )
        except PreconditionFailed:
            continue  # another instance wrote one first: read and use it
        return Listing(listing.run_id, listing.created_at, listing.files, etag), True
    raise StateError(f"{layout.listing} kept changing while this instance tried to read it")


# ---------------------------------------------------------------------- job summary


async def read_summary(store: Store, layout: StateLayout) -> dict[str, Any] | None:
    found = await store.get_bytes(layout.summary.key)
    return None if found is None else loads(found[0], layout.summary)


async def write_summary(store: Store, layout: StateLayout, summary: Mapping[str, Any]) -> bool:
    """Store ``summary`` unless a final one for the same run is there; ``True`` if written.

    Conditional on what was read, so two instances finishing at once write it once.
    """
    found = await store.get_bytes(layout.summary.key)
    if found is not None:
        try:
            existing = loads(found[0], layout.summary)
        except StateError:
            existing = {}
        final = existing.get("TransformJobStatus") in FINAL_STATUSES
        if existing.get("RunId") == summary["RunId"] and final:
            return False
    try:
        await store.put_bytes(
            layout.summary.key,
            dumps(summary),
            if_none_match=found is None,
            if_match=None if found is None else found[1],
        )
    except PreconditionFailed:
        return False  # another instance wrote it meanwhile
    return True
