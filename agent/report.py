"""What a run tells its operator: the job summary and progress.

The summary mirrors DescribeTransformJob (``TransformJobStatus``, ``FailureReason``,
start and end times) and adds one entry per file with its counts (each file's result and
its statuses are ``agent.results``). Progress is a bar
redrawn on stderr when stderr is a terminal, else one log line per finished file.
Nothing here ever sees a request body or a credential: only sizes and counts.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from agent import metrics
from agent.redact import scrub
from agent.results import COMPLETED, FAILED, IN_PROGRESS, LOST, FileOutcome, FileResult

log = logging.getLogger("agent.run")


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    ``/proc/self/status`` ``VmHWM`` where there is one: ``getrusage`` also counts what
    the parent process held in the instant between fork and exec.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Phases:
    """Where a run's time went (README "Where the time goes"): the moments each phase
    began and ended, on the monotonic clock, read as seconds by ``seconds``.

    Listing and the model's start-up run side by side, so their seconds may overlap; the
    first request, transforming and committing follow each other.
    """

    __slots__ = (
        "started",
        "listing",
        "listed",
        "model",
        "ready",
        "first_request",
        "last_answer",
        "ended",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.listing: float | None = None  # the listing began
        self.listed: float | None = None  # … and was taken
        self.model: float | None = None  # the model command started (or /ping was first asked)
        self.ready: float | None = None  # the first 200 from every replica's /ping
        self.first_request: float | None = None  # the first /invocations request went out
        self.last_answer: float | None = None  # the last answer came back
        self.ended: float | None = None  # the run's end

    def request_sent(self) -> None:
        if self.first_request is None:
            self.first_request = time.monotonic()

    def answered(self) -> None:
        self.last_answer = time.monotonic()

    def seconds(self) -> dict[str, float | None]:
        """Each phase's seconds, ``None`` for a phase the run never reached."""
        end = self.ended if self.ended is not None else time.monotonic()

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(max(b - a, 0.0), 3)

        transforming = span(self.first_request, self.last_answer)
        after = self.last_answer if self.last_answer is not None else self.ready
        return {
            "ListingSeconds": span(self.listing, self.listed),
            "ModelStartupSeconds": span(self.model, self.ready),
            "FirstRequestSeconds": span(self.started, self.first_request),
            "TransformingSeconds": transforming,
            "CommittingSeconds": span(after, end) if self.first_request is not None else None,
            "TotalSeconds": span(self.started, end),
        }

    def sentence(self) -> str:
        """The phases in one sentence, for the log line that ends the run."""
        s = self.seconds()
        parts: list[str] = []
        if s["ListingSeconds"] is not None:
            parts.append(f"listing took {s['ListingSeconds']:.2f} s")
        if s["ModelStartupSeconds"] is not None:
            parts.append(
                f"the model answered /ping {s['ModelStartupSeconds']:.2f} s after it started"
                + (" (alongside the listing)" if parts else "")
            )
        if s["FirstRequestSeconds"] is not None:
            parts.append(f"the first request went out at {s['FirstRequestSeconds']:.2f} s")
            parts.append(
                f"transforming took {s['TransformingSeconds'] or 0.0:.2f} s and committing "
                f"{s['CommittingSeconds'] or 0.0:.2f} s"
            )
        else:
            parts.append("no request was sent")
        return f"{'; '.join(parts)}; {s['TotalSeconds']:.2f} s in all"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class JobSummary:
    """The job as DescribeTransformJob would show it, plus per-file entries."""

    name: str
    started_at: str = field(default_factory=_now)
    started: float = field(default_factory=time.monotonic)
    status: str = IN_PROGRESS
    failure_reason: str | None = None
    ended_at: str | None = None
    files: list[FileOutcome] = field(default_factory=list)
    execution_parameters: dict[str, Any] = field(default_factory=dict)
    transform_started: float | None = None  # the model answered: data began to flow
    instance: str | None = None  # this instance's identity and where it came from
    job_status: str | None = None  # the whole job's, when this instance wrote its summary
    replicas: list[dict[str, Any]] = field(default_factory=list)  # with several replicas
    phases: Phases = field(init=False)

    def __post_init__(self) -> None:
        self.phases = Phases(self.started)

    def begin_transform(self) -> None:
        """The model is ready; throughput counts from here, not from start-up."""
        self.transform_started = time.monotonic()

    def end(self, status: str, failure_reason: str | None = None) -> None:
        self.status = status
        self.failure_reason = failure_reason
        self.ended_at = _now()
        self.phases.ended = time.monotonic()

    def as_json(self) -> dict[str, Any]:
        """The whole summary, per-file entries included."""
        summary = self.head_json()
        summary["Files"] = [f.as_json() for f in self.files]
        return summary

    def head_json(self) -> dict[str, Any]:
        """The summary without its per-file entries: ``"Files"`` stands where they go, as
        ``None`` (``FileResult.as_json`` gives each entry)."""
        now = time.monotonic()
        seconds = now - self.started
        flowing = now - self.transform_started if self.transform_started is not None else 0.0
        # Shards of big files are units of work, not files: the files are the whole ones
        # and the sharded ones (their .out), and the work this instance did is its whole
        # files and its shards (an assembled file's counts are its shards', summed).
        files = [f for f in self.files if f.shard is None]
        work = [f for f in self.files if not f.shards]
        done = [f for f in files if f.status == COMPLETED]
        in_bytes = sum(f.input_bytes for f in work)
        summary: dict[str, Any] = {
            "TransformJobName": self.name,
            "TransformJobStatus": self.status,
            "Instance": self.instance,
            "JobSummaryStatus": self.job_status,
            "TransformStartTime": self.started_at,
            "TransformEndTime": self.ended_at,
            "ExecutionParameters": self.execution_parameters,
            "FilesTotal": len(files),
            "FilesCompleted": len(done),
            "FilesFailed": sum(f.status == FAILED for f in files),
            "Records": sum(f.records for f in work),
            "FailedRecords": sum(f.failed_records for f in work),
            "Requests": sum(f.requests for f in work),
            "InputBytes": in_bytes,
            "OutputBytes": sum(f.output_bytes for f in work),
            "Seconds": round(seconds, 3),
            "TransformSeconds": round(flowing, 3),
            "InputMBPerSecond": round(in_bytes / 1e6 / flowing, 2) if flowing > 0 else 0.0,
            "PeakRSSBytes": peak_rss_bytes(),
            "Phases": self.phases.seconds(),
            "Files": None,
        }
        if shards := [f for f in self.files if f.shard is not None]:
            summary["Shards"] = len(shards)
            summary["ShardsCompleted"] = sum(f.status == COMPLETED for f in shards)
        if self.failure_reason:
            summary["FailureReason"] = self.failure_reason
        if self.replicas:
            summary["Replicas"] = self.replicas
        return summary


class Progress:
    """Files, records, bytes, rate and ETA: a bar on a terminal, log lines elsewhere."""

    REDRAW_SECONDS = 0.25

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.records = 0
        self.failed_records = 0  # records that failed alone (Agent.MaxFailedRecords)
        self.bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def begin(self) -> None:
        """The model is ready: rates and ETA count from now."""
        self.started = time.monotonic()

    def advance(self, records: int, nbytes: int) -> None:
        """Records and input bytes just sent; redraws the bar at most four times a second."""
        self.records += records
        self.bytes += nbytes
        counts = metrics.current()
        counts.records_read.inc(records)
        counts.input_bytes.inc(nbytes)
        if self.tty:
            now = time.monotonic()
            if now - self._drawn >= self.REDRAW_SECONDS:
                self._drawn = now
                self._draw()

    def file_done(self, result: FileResult) -> None:
        self.files_done += 1
        self.failed_records += result.failed_records
        if not result.shards:  # an assembled file's records are its shards', counted there
            kept = result.records - result.failed_records  # failed ones: counted as they fail
            outcome = "transformed" if result.status == COMPLETED else "unfinished"
            metrics.current().records.labels(outcome=outcome).inc(kept)
        if self.tty:
            self._draw()
            if result.status != COMPLETED:
                self.stream.write(scrub(f"\r\x1b[K{result.input_uri}: {result.error}\n"))
            return
        if result.status == COMPLETED:
            failed = f" ({result.failed_records} failed)" if result.failed_records else ""
            log.info(
                "%s -> %s: %d records%s, %d requests, %d bytes in, %d bytes out, %.2f s",
                result.input_uri,
                result.output_uri,
                result.records,
                failed,
                result.requests,
                result.input_bytes,
                result.output_bytes,
                result.seconds,
                extra={"file": result.input_uri, "status": result.status},
            )
        else:
            # A file another instance took over is no failure of this one (exit code 0).
            level = logging.WARNING if result.status == LOST else logging.ERROR
            extra = {"file": result.input_uri, "status": result.status}
            log.log(level, "%s", result.error, extra=extra)

    def close(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.bytes / elapsed
        fraction = self.bytes / self.total_bytes if self.total_bytes else 0.0
        fraction = min(fraction, 1.0)
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 and self.total_bytes else 0.0
        width = 24
        filled = int(fraction * width)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r\x1b[K[{bar}] {self.files_done}/{self.total_files} files, "
            f"{self.records} records, "
            + (f"{self.failed_records} failed, " if self.failed_records else "")
            + f"{self.bytes / 1e6:.1f} MB, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta:.0f} s"
        )
        self.stream.flush()
