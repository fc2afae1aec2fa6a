"""Completion records (``done/``) and the resume rule.

Records are stored one per object (``done/<file-id>.json``, Lease mode, where another
instance may need one file's record at once) or many per object
(``done/batch-<holder>-<n>.json``, Static mode: one PUT for many small files instead of one
each). Where a file has several records, the one finished last counts.

A record is written once a file is final in a run: ``Completed`` only after its ``.out``
was committed, or ``Failed``. A completed record settles its file in every later run while
the input's ETag and the settings hash stay the same (that is resume); a failed one only
in its own run, so a rerun tries the file again. The summary is built from the records
over one listing snapshot (``agent.coordination.summary``), so any instance can write it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from agent.coordination.state import (
    READS_IN_FLIGHT,
    STATE_FORMAT,
    StateError,
    StateLayout,
    dumps,
    loads,
)
from agent.errors import UsageError
from agent.job import DataUri
from agent.results import COMPLETED, FAILED, file_entry
from agent.storage import InputFile, ObjectInfo, Store, file_id

log = logging.getLogger("agent.state")


class SettingsMismatch(UsageError):
    """Files were completed with other output settings; the CLI exits 2 unless ``--force``."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A finished file, as written to ``done/<file-id>.json`` (SageMaker-style names)."""

    Input: str
    InputETag: str | None
    SettingsHash: str
    Status: str  # Completed or Failed
    RunId: str
    Instance: str  # who processed it, for status and the summary
    Output: str
    OutputETag: str | None = None
    Records: int = 0
    Requests: int = 0
    InputBytes: int = 0
    OutputBytes: int = 0
    Seconds: float = 0.0
    FailureReason: str | None = None
    FinishedAt: str = ""
    FailedRecords: int = 0  # records that failed alone, listed in the errors file
    ErrorsETag: str | None = None  # that errors file, committed with the output
    # A shard's record (README "Shards"): its nominal range "<start>-<end>", where its
    # first record began and where its last ended (the boundary proof).
    Shard: str | None = None
    FirstRecordAt: int | None = None
    LastRecordEnd: int | None = None
    Shards: int = 0  # a sharded file's record: how many shards it was cut into
    # Recorded by an instance that found the output committed by another, which died
    # before writing this record: the work's counts (Records, Requests, InputBytes) died
    # with it and are 0 here (docs/design.md §4.7).
    CountsUnknown: bool = False

    @property
    def id(self) -> str:
        """The unit this record is of: its file, or one shard of it."""
        fid = file_id(self.Input)
        return fid if self.Shard is None else f"{fid}.{self.Shard}"

    # The facts the runner's summary reads (``agent.results.FileOutcome``): the runner keeps
    # the record in place of the file's ``FileResult`` once it is written.
    @property
    def status(self) -> str:
        return self.Status

    @property
    def records(self) -> int:
        return self.Records

    @property
    def requests(self) -> int:
        return self.Requests

    @property
    def input_bytes(self) -> int:
        return self.InputBytes

    @property
    def output_bytes(self) -> int:
        return self.OutputBytes

    @property
    def error(self) -> str | None:
        return self.FailureReason

    @property
    def failed_records(self) -> int:
        return self.FailedRecords

    def as_json(self) -> dict[str, Any]:
        """The file's entry in the runner's summary, as ``FileResult.as_json`` gives it."""
        return file_entry(
            self.Input,
            self.Output,
            self.Status,
            self.Records,
            self.Requests,
            self.InputBytes,
            self.OutputBytes,
            self.Seconds,
            self.OutputETag,
            self.FailureReason,
            self.FailedRecords,
            shard=self.Shard,
            shards=self.Shards,
        )

    @property
    def shard(self) -> str | None:
        return self.Shard

    @property
    def shards(self) -> int:
        return self.Shards

    def as_dict(self) -> dict[str, Any]:
        """The record as a flat dict (every field is a plain value: no deep copy needed)."""
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    def to_json(self) -> bytes:
        return dumps({"Format": STATE_FORMAT, **self.as_dict()})

    @classmethod
    def from_json(cls, data: bytes, where: DataUri) -> FileRecord:
        document = loads(data, where)
        document.pop("Format")
        try:
            return cls(**document)
        except TypeError as error:
            raise StateError(f"{where} is not a completion record ({error})") from None

    def summary_entry(self, run_id: str | None = None) -> dict[str, Any]:
        """The file's entry in ``summary.json``: what differs from the defaults (no zero
        counts), without the settings hash, and without ``RunId`` when it is ``run_id``."""
        entry = self.compact(("SettingsHash", "FinishedAt"))
        if run_id is not None and entry.get("RunId") == run_id:
            del entry["RunId"]
        return entry

    def compact(self, leave_out: Iterable[str] = ()) -> dict[str, Any]:
        """The fields whose values differ from the defaults (``FileRecord(**it)`` restores
        the record), less ``leave_out``."""
        skip = set(leave_out)
        return {
            name: value
            for name, default in _RECORD_DEFAULTS
            if name not in skip and (value := getattr(self, name)) != default
        }

    def final_for(self, item: InputFile, settings_hash: str | None, run_id: str) -> bool:
        """Whether this record settles ``item`` in run ``run_id``.

        A completed output counts while its input is unchanged (and, when ``settings_hash``
        is given, its settings are the same), in any run; a failure counts only in the run
        that failed it, so a rerun tries the file again.
        """
        if self.Status == COMPLETED:
            same_input = (
                item.info is not None and item.problem is None and self.InputETag == item.info.etag
            )
            return same_input and settings_hash in (None, self.SettingsHash)
        return self.Status == FAILED and self.RunId == run_id


_RECORD_FIELDS = tuple(field.name for field in fields(FileRecord))
_NO_DEFAULT = object()  # never equal to a value: required fields are always kept
_RECORD_DEFAULTS = tuple(
    (field.name, _NO_DEFAULT if field.default is MISSING else field.default)
    for field in fields(FileRecord)
)
_BATCH_COMMON = ("SettingsHash", "RunId", "Instance")  # once per batch when all agree


async def write_record(store: Store, layout: StateLayout, record: FileRecord) -> None:
    """Write (or replace) a file's record; call only after its ``.out`` is committed."""
    await store.put_bytes(layout.done(record.id).key, record.to_json())


async def write_records(
    store: Store, layout: StateLayout, name: str, records: Iterable[FileRecord]
) -> tuple[str, str]:
    """Write many files' records as one object ``done/batch-<name>.json``; its key and ETag.

    Compact: the fields every record of the batch shares (settings hash, run, instance)
    are written once under ``Common``, and each record keeps only its other fields that
    differ from the defaults.
    """
    batch = list(records)
    common: dict[str, Any] = {}
    for shared in _BATCH_COMMON:
        values = {getattr(record, shared) for record in batch}
        if len(values) == 1:
            common[shared] = values.pop()
    entries = [record.compact(common) for record in batch]
    document = {"Format": STATE_FORMAT, "Common": common, "Batch": entries}
    data = dumps(document, compact=True)
    key = layout.done(f"{BATCH_PREFIX}{name}").key
    return key, await store.put_bytes(key, data)


BATCH_PREFIX = "batch-"
_Entries = list[tuple[str, FileRecord]]  # (file id, record) as one object holds them


def _parse(key: str, data: bytes, where: DataUri) -> _Entries:
    stem = _stem(key)
    if not stem.startswith(BATCH_PREFIX):
        return [(stem, FileRecord.from_json(data, where))]
    document = loads(data, where)
    try:
        common = document.get("Common", {})
        records = [FileRecord(**common, **entry) for entry in document["Batch"]]
    except (KeyError, TypeError) as error:
        raise StateError(f"{where} is not a batch of completion records ({error})") from None
    return [(record.id, record) for record in records]


class RecordCache:
    """Every completion record under the state prefix, re-read only where an ETag changed."""

    def __init__(self, store: Store, layout: StateLayout) -> None:
        self.store = store
        self.layout = layout
        self._objects: dict[str, tuple[str, _Entries]] = {}  # key -> (ETag, its records)

    def remember(self, key: str, etag: str, entries: _Entries) -> None:
        """Records this process just wrote as object ``key``: not read back at the next
        ``refresh`` while its ETag stays ``etag`` (no second copy of every record)."""
        self._objects[key] = (etag, entries)

    @property
    def records(self) -> dict[str, FileRecord]:
        """One record per file id: the one finished last."""
        merged: dict[str, FileRecord] = {}
        for _, entries in self._objects.values():
            for fid, record in entries:
                known = merged.get(fid)
                if known is None or record.FinishedAt >= known.FinishedAt:
                    merged[fid] = record
        return merged

    async def refresh(self) -> dict[str, FileRecord]:
        listed = await self.store.list_objects(self.layout.done_prefix.key)
        current = {info.key: info for info in listed if info.key.endswith(".json")}
        for key in set(self._objects) - set(current):
            del self._objects[key]
        stale = [i for k, i in current.items() if self._objects.get(k, ("",))[0] != i.etag]
        limit = asyncio.Semaphore(READS_IN_FLIGHT)

        async def fetch(info: ObjectInfo) -> None:
            async with limit:
                found = await self.store.get_bytes(info.key)
            if found is None:
                return  # deleted since the listing
            where = DataUri(self.layout.root.scheme, self.layout.root.bucket, info.key)
            try:
                self._objects[info.key] = (found[1], _parse(info.key, found[0], where))
            except StateError as error:
                log.warning("%s; its files count as not done", error)

        await asyncio.gather(*(fetch(info) for info in stale))
        return self.records

    async def get(self, fid: str) -> FileRecord | None:
        """One file's own record (``done/<file-id>.json``), fresh from the store."""
        where = self.layout.done(fid)
        found = await self.store.get_bytes(where.key)
        if found is None:
            self._objects.pop(where.key, None)
            return self.records.get(fid)
        self._objects[where.key] = (found[1], _parse(where.key, found[0], where))
        return self.records.get(fid)


def _stem(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def completed(
    records: Mapping[str, FileRecord],
    files: Iterable[InputFile],
    settings_hash: str,
    *,
    force: bool = False,
) -> set[str]:
    """The ids of ``files`` already completed with the same input ETag and settings hash.

    Raises ``SettingsMismatch`` when an unchanged input was completed with other settings
    (the outputs would differ), unless ``force``: then those files are simply redone.
    """
    done: set[str] = set()
    mismatched: list[FileRecord] = []
    for item in files:
        record = records.get(fid := item.id)
        if record is None or record.Status != COMPLETED:
            continue
        if record.final_for(item, settings_hash, ""):
            done.add(fid)
        elif record.final_for(item, None, ""):
            mismatched.append(record)
    if mismatched and not force:
        raise SettingsMismatch(
            f"{len(mismatched)} file(s) were completed with different output settings "
            f"(settings hash {mismatched[0].SettingsHash[:12]}…, now {settings_hash[:12]}…), "
            f"e.g. {mismatched[0].Input}; rerun with --force to redo them with the new "
            "settings, or use another S3OutputPath or Agent.StateUri"
        )
    return done
