"""One file this instance works on: the claim the coordinator hands to the runner.

A :class:`Claim` carries what the pipeline needs for an exactly-once commit: the output's
``metadata`` and ``on_upload_id`` for ``open_upload``, ``commit(upload)`` (the lease check,
then the conditional write), ``lost`` to race against (``run`` does that), and
``record(result)`` for the completion record (written by its coordinator, the claim's
:class:`RecordWriter`). Leaving its ``async with`` forgets the recorded UploadIds and
releases the lease, unless the lease was lost: then it is another's.

With ``Agent.MaxFailedRecords`` a claim also names the file's errors file
(``errors_output``, ``on_errors_upload_id``); ``commit(upload, errors)`` commits it first,
then the ``.out``, both under conditions decided before the file was processed
(docs/design.md §4.5). An errors file left by an instance that stopped between the two
commits is kept when it holds the same bytes, so a redo never writes a second version;
the instance that left it, once its ``.out`` commit is refused, deletes it only when the
record of the ``.out`` that won names another (``_take_back_errors``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

from agent.aio import race
from agent.coordination.commit import CommitRule, OutputHead, UploadRecorder, matches
from agent.coordination.lease import ClaimLost, HeldLease, LeaseLost
from agent.errors import BtAgentError
from agent.job import DataUri
from agent.results import COMPLETED, FAILED, FileResult
from agent.storage import InputFile, PreconditionFailed, StorageError, Store, Upload

if TYPE_CHECKING:
    from agent.coordination.records import FileRecord

_T = TypeVar("_T")
log = logging.getLogger("agent.state")

# How often, and how far apart, a claim that lost a ``.out`` to another instance looks for
# that instance's record before deciding about the errors file it committed itself.
RECORD_LOOKS = 6
RECORD_LOOK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ErrorsTarget:
    """Where a file's errors file goes, how its commit is conditioned, and the errors file
    found there before the file was processed (``None``: none)."""

    output: DataUri
    store: Store
    rule: CommitRule
    recorder: UploadRecorder
    existing: OutputHead | None

    def reusable(self, written: ErrorsWritten, metadata: dict[str, str]) -> bool:
        """Whether the errors file found may hold ``written``'s bytes: made from the same
        input version with the same settings (``metadata``, the output's, which the errors
        file carries too), and of the same size."""
        found = self.existing
        return found is not None and found.size == written.size and matches(found, metadata)


@dataclass(frozen=True, slots=True)
class ErrorsWritten:
    """A file's errors file as written, not yet committed: its upload, size and SHA-256."""

    upload: Upload
    size: int
    sha256: bytes


class RecordWriter(Protocol):
    """What a claim needs of its coordinator: write a file's record, hear that it closed."""

    async def record(self, item: InputFile, result: FileResult) -> FileRecord:
        """Write ``item``'s completion record from ``result``; return it."""
        ...

    def released(self, fid: str) -> None:
        """The claim of the file ``fid`` is closed: it is no longer held."""
        ...

    async def after_shard(self, unit: InputFile) -> Claim | None:
        """The claim to assemble ``unit``'s file, when its last shard just settled."""
        ...

    async def shard_records(self, fid: str) -> list[FileRecord | None]:
        """The final records of the file's shards, in file order (``None``: not final)."""
        ...

    async def redo_claim(self, unit: InputFile, begin: int) -> Claim:
        """A claim to do the shard ``unit`` again from ``begin``."""
        ...

    async def shards_assembled(self, fid: str) -> None:
        """The file's ``.out`` is committed and recorded: its shard objects may go."""
        ...

    async def file_record(self, fid: str) -> FileRecord | None:
        """The file's own completion record as the store holds it now (``None``: none)."""
        ...


class OutputTaken(BtAgentError):
    """A conditional commit refused without a lease: the file fails (no other instance owns it)."""


class Claim:
    """One file this instance may work on now; ``async with`` it while doing so."""

    def __init__(
        self,
        item: InputFile,
        output: DataUri | None,
        metadata: dict[str, str],
        rule: CommitRule,
        lease: HeldLease | None,
        recorder: UploadRecorder,
        records: RecordWriter,
        errors: ErrorsTarget | None = None,
    ) -> None:
        self.item = item
        self.file_id = item.id
        self.output = output  # None: the output name is refused (the pipeline fails the file)
        self.metadata = metadata  # for open_upload(metadata=...)
        self.rule = rule
        self.lease = lease
        self.lost = lease.lost if lease is not None else asyncio.Event()
        self._recorder = recorder
        self.on_upload_id = recorder.record  # for open_upload(on_upload_id=...)
        self._records = records
        self.committed = False  # the output is ours: record it even if the lease goes now
        self.settled = False  # committed and recorded: the lease has nothing left to guard
        self.output_etag: str | None = None  # once committed (also when a stop met the commit)
        self.errors = errors  # None: isolation is off (no errors file)
        self.errors_output = errors.output if errors is not None else None
        self.on_errors_upload_id = errors.recorder.record if errors is not None else None
        self.errors_etag: str | None = None  # the errors file committed with the output
        # A sharded file's assembly (README "Shards"): its shards in file order; else None.
        self.shards: tuple[InputFile, ...] | None = None
        self.coordinator = records  # for a shard's follow-ups (assembly, redo)
        self.in_assembly = False  # a shard done again inside its file's assembly

    def check(self) -> None:
        """Raise ``ClaimLost`` unless this instance still owns the file (before committing)."""
        if self.lease is not None:
            self.lease.check()
        elif self.lost.is_set():
            raise ClaimLost(f"{self.item.uri}: another instance committed its output first")

    async def commit(self, upload: Upload, errors: ErrorsWritten | None = None) -> str:
        """Commit ``upload`` (and first ``errors``, the file's errors file) under the
        claim's conditions; ``ClaimLost`` if another won. A stop that comes meanwhile
        waits for both, so the two are committed together or not at all."""
        self.check()
        committing = asyncio.ensure_future(self._commit(upload, errors))
        try:
            etag = await asyncio.shield(committing)
        except asyncio.CancelledError:
            # A stop while S3 may already be writing the object: finish the commit, so
            # the output is either not there or there with its record, never in between.
            try:
                self.output_etag = await committing
            except Exception:
                raise asyncio.CancelledError() from None
            self.committed = True
            raise
        except PreconditionFailed as error:
            if self.lease is None and (self.shards is not None or self.in_assembly):
                # Two instances settled a file's last shards at once and both assemble it
                # (README "Shards"): the other's .out (or redone shard) is the same; it
                # records it.
                self.lost.set()
                raise ClaimLost(
                    f"{self.item.uri}: another instance assembling it committed {self.output} first"
                ) from error
            if self.lease is None:
                # Static mode: no other instance writes this file's output, so someone
                # else wrote it meanwhile: a failure of this file, never "Lost".
                raise OutputTaken(
                    f"{self.item.uri}: not committed ({self.rule} was refused): {self.output} "
                    "was written by something other than this job meanwhile; find what "
                    "writes there, then run the job again"
                ) from error
            self.lease.lose("another instance committed the output first")
            self.lost.set()
            raise ClaimLost(
                f"{self.item.uri}: not committed ({self.rule} was refused): another instance "
                f"committed {self.output} first"
            ) from error
        self.committed = True
        self.output_etag = etag
        return etag

    async def _commit(self, upload: Upload, errors: ErrorsWritten | None) -> str:
        target = self.errors
        ours = False  # the errors file committed here (not one kept as found)
        if errors is not None:
            assert target is not None
            self.errors_etag = await self._kept(target, errors)
            if self.errors_etag is None:
                self.errors_etag = await errors.upload.commit(**target.rule.kwargs)
                ours = True
        try:
            etag = await upload.commit(**self.rule.kwargs)
        except PreconditionFailed:
            if ours:  # next to another's output: take it back, unless that one kept it
                assert self.errors_etag is not None
                await self._take_back_errors(self.errors_etag)
            self.errors_etag = None
            raise
        if errors is None and target is not None and target.existing is not None:
            await self._delete_errors(target.existing.etag, "this run had no failed records")
        return etag

    async def _kept(self, target: ErrorsTarget, errors: ErrorsWritten) -> str | None:
        """The ETag of the errors file found at the claim, when it holds exactly the bytes
        written now; else ``None``. An instance that stopped between its two commits left
        it: writing it again would give the object a second version (§4.5)."""
        if not target.reusable(errors, self.metadata):
            return None
        assert target.existing is not None
        found = await target.store.head(target.output.key)
        if found is None or found.etag != target.existing.etag:
            return None  # gone or replaced meanwhile: the commit's condition decides
        digest = hashlib.sha256()
        async with target.store.read(found) as reader:
            async for chunk in reader:
                digest.update(chunk)
        if digest.digest() != errors.sha256:
            return None  # the model's answers differ from the earlier run's: replace it
        log.info(
            "%s: kept %s, committed earlier with the same records", self.item.uri, target.output
        )
        return found.etag

    async def _take_back_errors(self, etag: str) -> None:
        """Delete the errors file this claim committed (``etag``) when another instance of
        the job committed the ``.out`` meanwhile, unless that instance kept it (``_kept``:
        it found it left here, with the same bytes): then its record names it. The other
        record is told by its ``OutputETag``; while it is not written yet (its writer is
        between its commit and its record) the file is left as it is, rather than deleting
        what a record may name (§4.5)."""
        target = self.errors
        assert target is not None and self.output is not None
        if self.lease is None and self.shards is None and not self.in_assembly:
            # Static mode: no other instance of the job writes this output (OutputTaken).
            await self._delete_errors(etag, "its output was written by something else")
            return
        for attempt in range(RECORD_LOOKS):
            if attempt:
                await asyncio.sleep(RECORD_LOOK_SECONDS)
            try:
                out = await target.store.head(self.output.key)
                record = await self._records.file_record(self.file_id)
            except StorageError as error:
                log.warning("%s: left %s as it is (%s)", self.item.uri, target.output, error)
                return
            if out is not None and record is not None and record.OutputETag == out.etag:
                if record.ErrorsETag == etag:
                    log.info(
                        "%s: %s stays: the instance that committed %s kept it",
                        self.item.uri,
                        target.output,
                        self.output,
                    )
                    return
                await self._delete_errors(etag, "its output was committed first")
                return
        log.warning(
            "%s: left %s as it is: the record of %s, committed by another instance, was "
            "not there after %.1f s",
            self.item.uri,
            target.output,
            self.output,
            (RECORD_LOOKS - 1) * RECORD_LOOK_SECONDS,
        )

    async def _delete_errors(self, etag: str, why: str) -> None:
        """Delete the errors file if it is still the one with ``etag`` (best effort)."""
        target = self.errors
        assert target is not None
        key = target.output.key
        try:
            found = await target.store.head(key)
            if found is not None and found.etag == etag:
                await target.store.delete(key)
                log.info("%s: deleted %s (%s)", self.item.uri, target.output, why)
        except StorageError as error:
            log.warning("%s: could not delete %s (%s)", self.item.uri, target.output, error)

    async def run(self, work: Awaitable[_T]) -> _T:
        """Await ``work``, cancelling it and raising ``ClaimLost`` if the claim is lost."""
        if self.lease is None:
            # Without a lease nothing sets ``lost`` but a refused commit, which raises
            # ClaimLost inside ``work`` itself: no watcher (two futures a file) is needed.
            return await work
        task = await race(work, self.lost)  # a lost claim's upload is aborted inside
        if not task.cancelled() and isinstance(task.exception(), ClaimLost):
            return task.result()  # raises it: refused at the commit, say
        if self.lost.is_set() and (task.cancelled() or task.exception() is not None):
            raise LeaseLost(f"{self.item.uri}: stopped, the lease was lost ({self.lease.reason})")
        return task.result()

    async def record(self, result: FileResult) -> FileRecord | None:
        """Write the file's completion record (Completed or Failed) and return it; nothing
        if it was lost."""
        if result.status not in (COMPLETED, FAILED) or (self.lost.is_set() and not self.committed):
            return None
        recorded = await self._records.record(self.item, result)
        self.settled = self.committed and result.status == COMPLETED
        return recorded

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())

    async def close(self) -> None:
        """Forget the UploadIds, release the lease (unless lost, or the file is settled and
        the lease still ours); safe to call twice."""
        await self._recorder.forget()
        if self.errors is not None:
            await self.errors.recorder.forget()
        if self.lease is not None:
            await self.lease.release(settled=self.settled)
        self._records.released(self.file_id)
