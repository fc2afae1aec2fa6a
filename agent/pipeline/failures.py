"""Failed records (README "Failed records"): each file's ``<name>.errors.jsonl`` and the
instance's ``Agent.MaxFailedRecords`` limit.

A file's errors file is an upload like its ``.out``, opened at its first failed record
and written in input order by the file's writer; the claim commits it before the
``.out`` (docs/design.md §4.7). A file without failed records writes none.
"""

from __future__ import annotations

import contextlib
import hashlib
from types import TracebackType

from agent import metrics
from agent._compat import BytesLike
from agent.coordination.claim import Claim, ErrorsWritten
from agent.job import DataUri
from agent.pipeline.ordering import Assembler
from agent.pipeline.requests import Answered, FailedRecord
from agent.results import FileResult
from agent.storage import Store, Upload, UploadIdCallback

FIRST_NAMED = 3  # failed records the limit's message names
ERRORS_CONTENT_TYPE = "application/jsonlines"


class ErrorsFile:
    """One file's errors file, opened at its first line; ``async with`` it around the
    file's work, so a file that does not commit leaves nothing behind."""

    def __init__(
        self,
        sink: Store,
        where: DataUri | None,
        *,
        kms_key_id: str | None,
        metadata: dict[str, str] | None,
        on_upload_id: UploadIdCallback | None,
    ) -> None:
        self.sink = sink
        self.where = where
        self.kms_key_id = kms_key_id
        self.metadata = metadata
        self.on_upload_id = on_upload_id
        self.upload: Upload | None = None
        self.count = 0
        self._digest = hashlib.sha256()  # a redo keeps an identical errors file (§4.5)
        self._stack = contextlib.AsyncExitStack()

    async def add(self, failed: FailedRecord) -> None:
        await self.add_line(failed.entry())

    async def add_line(self, line: bytes) -> None:
        """One line of the errors file, ``\n`` included (a failed record's entry)."""
        if self.where is None:  # isolation is off: no record fails alone
            raise RuntimeError("a failed record without an errors file")
        if self.upload is None:
            self.upload = await self._stack.enter_async_context(
                self.sink.open_upload(
                    self.where.key,
                    kms_key_id=self.kms_key_id,
                    metadata=self.metadata,
                    content_type=ERRORS_CONTENT_TYPE,
                    on_upload_id=self.on_upload_id,
                )
            )
        await self.upload.write(line)
        self._digest.update(line)
        self.count += 1

    def written(self) -> ErrorsWritten | None:
        """What to commit with the ``.out`` (``None``: no record failed)."""
        if self.upload is None:
            return None
        return ErrorsWritten(self.upload, self.upload.bytes_written, self._digest.digest())

    async def __aenter__(self) -> ErrorsFile:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()  # an upload not committed is aborted


class FailureLimit:
    """The failed records of this instance's files, against ``Agent.MaxFailedRecords``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # None: isolation off; -1: no limit
        self.count = 0
        self.first: list[FailedRecord] = []

    def add(self, failed: list[FailedRecord]) -> str | None:
        """Count ``failed``; the reason the run stops when the limit was just passed."""
        before = self.count
        self.count += len(failed)
        room = FIRST_NAMED - len(self.first)
        if room > 0:
            self.first += failed[:room]
        limit = self.limit
        if limit is None or limit < 0 or not before <= limit < self.count:
            return None
        named = "; ".join(record.where() for record in self.first)
        more = "" if self.count <= len(self.first) else f" (the first {len(self.first)} named)"
        return (
            f"more records failed than Agent.MaxFailedRecords allows ({limit}): "
            f"{self.count} failed on this instance{more}: {named}"
        )


class Sinks:
    """Where one file's answers go, in input order: outputs to its ``.out`` (through the
    assembler), failed records to its errors file."""

    __slots__ = ("assembler", "errors", "result")

    def __init__(self, assembler: Assembler, errors: ErrorsFile, result: FileResult) -> None:
        self.assembler = assembler
        self.errors = errors
        self.result = result

    async def put(self, answer: BytesLike | Answered) -> None:
        if not isinstance(answer, Answered):
            await self.assembler.add(answer)
            return
        for data in answer.outputs:
            await self.assembler.add(data)
        for failed in answer.failed:
            await self.errors.add(failed)
            self.result.failed_records += 1
            metrics.current().records.labels(outcome="failed").inc()


def open_outputs(sink: Store, claim: Claim, kms_key_id: str | None) -> tuple[Upload, ErrorsFile]:
    """A claim's ``.out`` upload and its errors file (opened at its first line), with the
    claim's metadata and upload records: what every file's work writes into."""
    assert claim.output is not None
    upload = sink.open_upload(
        claim.output.key,
        kms_key_id=kms_key_id,
        metadata=claim.metadata or None,
        on_upload_id=claim.on_upload_id,
    )
    errors = ErrorsFile(
        sink,
        claim.errors_output,
        kms_key_id=kms_key_id,
        metadata=claim.metadata or None,
        on_upload_id=claim.on_errors_upload_id,
    )
    return upload, errors
