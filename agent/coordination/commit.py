"""Exactly-once commits (docs/design.md §4.5, §4.6): ``.out`` metadata, the commit rule, UploadIds.

Every ``.out`` carries, as S3 object metadata, the ETag of the input it was made from and
the hash of the settings that shaped it. Before a file is processed its output is looked
up once (:func:`head_output`), and :func:`commit_rule` decides how the commit must be
conditioned: ``If-None-Match: *`` when there is no output yet, ``If-Match`` on the old
ETag when a stale output (other input version or settings) is to be replaced, or no
commit at all when the output is already the right one. Deciding *before* processing is
what makes a late writer fail: whoever committed first changed what the condition names.

Each multipart upload is recorded under ``uploads/<file-id>/`` before it begins (by its
key: CreateMultipartUpload has not answered yet), then with its UploadId, and the record
deleted when it ends, so :func:`abort_orphans` can abort what a killed or displaced
instance left behind. An upload with no record at all (a run of an earlier version, a
record that could not be written) is found by its key: :class:`LeftoverUploads` lists
the open uploads of this instance's outputs when it begins (a lifecycle rule on the
bucket catches the rest).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.coordination.state import STATE_FORMAT, StateLayout, dumps, now_iso
from agent.job import DataUri
from agent.storage import ObjectNotFoundError, PendingUpload, S3Store, StorageError, Store, Stores

log = logging.getLogger("agent.state")

# S3 lower-cases metadata names; values must be ASCII (ETags, hex digests and job names are).
META_INPUT_ETAG = "bt-agent-input-etag"
META_SETTINGS_HASH = "bt-agent-settings-hash"
META_JOB = "bt-agent-job"


def output_metadata(input_etag: str, settings_hash: str, job_name: str) -> dict[str, str]:
    """The metadata every ``.out`` is committed with."""
    return {META_INPUT_ETAG: input_etag, META_SETTINGS_HASH: settings_hash, META_JOB: job_name}


@dataclass(frozen=True, slots=True)
class OutputHead:
    """An existing output: its ETag, size and metadata (``None`` where a store has none)."""

    etag: str
    size: int
    metadata: Mapping[str, str] | None


async def head_output(store: Store, key: str) -> OutputHead | None:
    """The output at ``key`` with its metadata, or ``None`` if there is none.

    ``Store.head`` returns no metadata, so for S3 this asks HeadObject itself through the
    store's client (with the store's retries). Local files carry no metadata.
    """
    if isinstance(store, S3Store):
        try:
            head = await store.call(
                f"looking up {store.uri(key)}",
                store.client.head_object,
                Bucket=store.bucket,
                Key=key,
            )
        except ObjectNotFoundError:
            return None
        metadata = {str(k).lower(): str(v) for k, v in head.get("Metadata", {}).items()}
        return OutputHead(str(head["ETag"]), int(head["ContentLength"]), metadata)
    info = await store.head(key)
    return None if info is None else OutputHead(info.etag, info.size, None)


@dataclass(frozen=True, slots=True)
class CommitRule:
    """How to condition one ``Upload.commit``: pass ``**rule.kwargs``."""

    if_none_match: bool = False
    if_match: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"if_none_match": self.if_none_match, "if_match": self.if_match}

    def __str__(self) -> str:
        return "If-None-Match: *" if self.if_none_match else f"If-Match: {self.if_match}"


def matches(head: OutputHead, metadata: Mapping[str, str]) -> bool:
    """Whether ``head`` was made from the same input version with the same settings."""
    if head.metadata is None:
        return False
    return all(
        head.metadata.get(name) == metadata.get(name)
        for name in (META_INPUT_ETAG, META_SETTINGS_HASH)
    )


def commit_rule(existing: OutputHead | None, metadata: Mapping[str, str]) -> CommitRule | None:
    """The condition for committing an output with ``metadata`` over ``existing``.

    ``None`` means the output is already there, made from the same input version with the
    same settings: nothing is to be written.
    """
    if existing is None:
        return CommitRule(if_none_match=True)
    if matches(existing, metadata):
        return None
    return CommitRule(if_match=existing.etag)


# ---------------------------------------------------------------------- UploadId records


@dataclass
class UploadRecorder:
    """Records each upload of one file's output; ``forget`` removes them once it ended.

    Pass :meth:`record` as ``open_upload(..., on_upload_id=...)``: it is awaited before
    CreateMultipartUpload is sent (``None``: the upload is about to begin, the record names
    its key) and again with the UploadId before the first part is sent, in the same
    record. So a crash at any moment leaves a record.
    """

    store: Store  # the state prefix's store
    layout: StateLayout
    fid: str
    output: DataUri
    holder: str
    written: list[DataUri] = field(default_factory=list)
    _beginning: DataUri | None = None  # the record of an upload whose UploadId is to come

    async def record(self, upload_id: str | None) -> None:
        where = self._beginning
        if where is None:
            where = self.layout.upload(self.fid, f"{self.holder}/{len(self.written)}")
        self._beginning = where if upload_id is None else None
        document = {
            "Format": STATE_FORMAT,
            "Scheme": self.output.scheme,
            "Bucket": self.output.bucket,
            "Key": self.output.key,
            "UploadId": upload_id,
            "Holder": self.holder,
            "StartedAt": now_iso(),
        }
        await self.store.put_bytes(where.key, dumps(document))
        if where not in self.written:
            self.written.append(where)

    async def forget(self) -> None:
        """Delete this file's records: its uploads were committed or aborted."""
        for where in self.written:
            try:
                await self.store.delete(where.key)
            except StorageError as error:
                log.warning("could not delete %s (%s); a later run will clean it", where, error)
        self.written.clear()
        self._beginning = None


async def _abort(target: Store, output: DataUri, upload: PendingUpload, whose: str) -> None:
    """Abort one open upload of ``output`` and log it (``whose`` ends the line); raises
    ``StorageError`` when it cannot be aborted (the caller says what is left)."""
    await target.abort_multipart_upload(upload.key, upload.upload_id)
    log.info("aborted the upload %s of %s%s", upload.upload_id, output, whose)


async def abort_orphans(
    stores: Stores,
    layout: StateLayout,
    fids: Iterable[str] | None = None,
    *,
    keep_holder: str | None = None,
) -> int:
    """Abort the recorded uploads of ``fids`` (default: every file); return how many.

    Call it when a file is taken over or claimed (its previous holder is gone or lost it),
    and at the start of a run for the files this instance owns. Uploads recorded by
    ``keep_holder`` (this instance) are left alone.
    """
    state = await stores.get(layout.root)
    wanted = None if fids is None else set(fids)
    prefixes = (
        [layout.uploads_prefix()]
        if wanted is None or len(wanted) > 8
        else [layout.uploads_prefix(fid) for fid in sorted(wanted)]
    )
    found = []
    for prefix in prefixes:
        found += await state.list_objects(prefix.key)
    aborted = 0
    for info in found:
        fid = info.key.rstrip("/").rsplit("/", 2)[-2]
        if wanted is not None and fid not in wanted:
            continue
        loaded = await state.get_bytes(info.key)
        if loaded is None:
            continue
        try:
            record = orjson.loads(loaded[0])
            output = DataUri(record["Scheme"], record["Bucket"], record["Key"])
            upload_id, holder = record["UploadId"], record.get("Holder")
            if upload_id is not None and not isinstance(upload_id, str):
                raise TypeError("UploadId")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("%s is not an upload record; deleting it", state.uri(info.key))
        else:
            if keep_holder is not None and holder == keep_holder:
                continue
            target = await stores.get(output)
            try:
                if upload_id is None:  # it was about to begin: whatever is open under the key
                    pending = await target.open_uploads([output.key])
                else:
                    pending = [PendingUpload(output.key, upload_id)]
                for upload in pending:
                    await _abort(target, output, upload, f" left by {holder}")
                    aborted += 1
            except StorageError as error:
                log.warning("could not abort an orphaned upload of %s: %s", output, error)
                continue
        await state.delete(info.key)
    return aborted


class LeftoverUploads:
    """The uploads of some outputs that were open when this instance began, by output.

    Found by key, so no record is needed (a run of an earlier version, a record that
    could not be written, a stop that gave up waiting for CreateMultipartUpload). Abort
    them only for files this instance owns: in Static mode its share, all at once; under
    leases each file's when this instance claims it (whoever began them lost the file).
    """

    def __init__(self, stores: Stores, found: dict[DataUri, list[PendingUpload]]) -> None:
        self.stores = stores
        self.found = found

    @classmethod
    async def find(
        cls, stores: Stores, prefix: DataUri, outputs: Iterable[DataUri]
    ) -> LeftoverUploads:
        """The open uploads of ``outputs`` (all under ``prefix``), from one listing of it.

        ``outputs`` is read only when something is open under ``prefix`` (it may be a
        generator over every file): memory follows what is open, not the file count.
        """
        store = await stores.get(prefix)
        keys = (o.key for o in outputs if (o.scheme, o.bucket) == (prefix.scheme, prefix.bucket))
        found: dict[DataUri, list[PendingUpload]] = {}
        for upload in await store.open_uploads(keys, under=prefix.key):
            found.setdefault(DataUri(prefix.scheme, prefix.bucket, upload.key), []).append(upload)
        return cls(stores, found)

    async def abort(self, outputs: Iterable[DataUri] | None = None) -> int:
        """Abort the leftovers of ``outputs`` (default: all found); return how many."""
        chosen = list(self.found) if outputs is None else list(outputs)
        aborted = 0
        for output in chosen:
            uploads = self.found.pop(output, [])
            if not uploads:
                continue
            target = await self.stores.get(output)
            for upload in uploads:
                try:
                    await _abort(target, output, upload, ", open since an earlier run")
                except StorageError as error:
                    log.warning("could not abort the leftover upload of %s: %s", output, error)
                    continue
                aborted += 1
        return aborted
