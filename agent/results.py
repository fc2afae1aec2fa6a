"""What became of each input file: its status, its counts, and its entry in the summary.

``FileResult`` is what the pipeline fills in for one file; ``FileOutcome`` is what the
summary needs of a finished file, which a completion record
(``agent.coordination.records.FileRecord``) also provides. The statuses are the words the
summary, the completion records and the state prefix all use. Coordination, the pipeline
and the runner import them from here; ``agent.report`` only presents them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

IN_PROGRESS = "InProgress"
COMPLETED, FAILED, STOPPED = "Completed", "Failed", "Stopped"
LOST = "Lost"  # another instance took the file over (its lease lapsed): not a failure here


@dataclass(slots=True)
class FileResult:
    """One input's outcome and counts; ``error`` is the sentence a user reads.

    One is kept per file until the run's summary is written: slotted (no ``__dict__``).
    """

    input_uri: str
    output_uri: str
    input_bytes: int = 0  # bytes the splitter consumed (uncompressed)
    status: str = IN_PROGRESS
    records: int = 0
    requests: int = 0
    output_bytes: int = 0
    error: str | None = None
    output_etag: str | None = None
    failed_records: int = 0  # records that failed alone (Agent.MaxFailedRecords)
    errors_etag: str | None = None  # the errors file committed with the output, if any
    extra_requests: int = 0  # requests for bodies cut after a 413 or to isolate records
    # A shard's proof (README "Shards"): where its first record began and its last ended.
    first_record_at: int | None = None
    last_record_end: int | None = None
    shard: str | None = None  # a shard's range "<start>-<end>", or None for a whole file
    shards: int = 0  # a sharded file's assembly: how many shards its .out joins
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def finish(self, status: str, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.seconds = time.monotonic() - self.started

    def as_json(self) -> dict[str, Any]:
        return file_entry(
            self.input_uri,
            self.output_uri,
            self.status,
            self.records,
            self.requests,
            self.input_bytes,
            self.output_bytes,
            self.seconds,
            self.output_etag,
            self.error,
            self.failed_records,
            shard=self.shard,
            shards=self.shards,
        )


def file_entry(
    input_uri: str,
    output_uri: str,
    status: str,
    records: int,
    requests: int,
    input_bytes: int,
    output_bytes: int,
    seconds: float,
    output_etag: str | None,
    error: str | None,
    failed_records: int = 0,
    *,
    shard: str | None = None,
    shards: int = 0,
) -> dict[str, Any]:
    """A file's entry in the runner's summary (from a ``FileResult`` or a completion record)."""
    entry: dict[str, Any] = {
        "Input": input_uri,
        "Output": output_uri,
        "Status": status,
        "Records": records,
        "Requests": requests,
        "InputBytes": input_bytes,
        "OutputBytes": output_bytes,
        "Seconds": round(seconds, 3),
    }
    if output_etag:
        entry["OutputETag"] = output_etag
    if failed_records:
        entry["FailedRecords"] = failed_records
    if error:
        entry["FailureReason"] = error
    if shard is not None:
        entry["Shard"] = shard
    if shards:
        entry["Shards"] = shards
    return entry


class FileOutcome(Protocol):
    """What the summary needs of a finished file: a ``FileResult``, or the completion
    record made from it (``agent.coordination.records.FileRecord``), which the runner keeps in its
    place so each file's facts are held once."""

    @property
    def status(self) -> str: ...
    @property
    def records(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def input_bytes(self) -> int: ...
    @property
    def output_bytes(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def failed_records(self) -> int: ...
    @property
    def shard(self) -> str | None: ...
    @property
    def shards(self) -> int: ...
    def as_json(self) -> dict[str, Any]: ...
