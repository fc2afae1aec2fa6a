"""The run's listing snapshot (``listing.json``): the files every instance plans over.

A *run* is one listing snapshot: instances that start while it has no summary join it, if
their job lists the same source (its fingerprint, see ``ListingSource``); once a summary
names its RunId, or when a start's job lists another source, that instance takes a new
snapshot in its place (a rerun). ``snapshot_verdict`` is that decision, made in one place
for a start (``open_listing``) and for ``bt-agent plan``. A listing entry holds only what
differs from file to file (``[relative key, size, ETag]``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.coordination.state import (
    STATE_FORMAT,
    StateError,
    StateLayout,
    dumps,
    loads,
    now_iso,
    read_summary_head,
)
from agent.job import DataUri
from agent.storage import InputFile, ListingSource, ObjectInfo, PreconditionFailed, Store

log = logging.getLogger("agent.state")


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
