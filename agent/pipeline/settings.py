"""What shapes the pipeline, resolved from the job: the bounds it enforces (see the
docstring of :mod:`agent.pipeline.file`)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.job import (
    DEFAULT_BATCH_STRATEGY,
    DEFAULT_MAX_CONCURRENT_TRANSFORMS,
    DEFAULT_MAX_PAYLOAD_MB,
    JobSettings,
)


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """What shapes the pipeline, resolved: units in the names."""

    split_type: str
    batch_strategy: str
    max_payload_bytes: int  # 0: no bound, bodies streamed
    max_records: int  # at most this many records a MultiRecord body; 0: no cap
    max_inflight: int  # requests alive at once, over every file
    files_reading: int  # files being read and split at once
    files_open: int  # files open at once: being read, awaiting answers, or committing
    reorder_buffer_bytes: int
    gzip: bool
    assemble_with: str
    kms_key_id: str | None
    require_line_per_record: bool = False  # Agent.RequireLinePerRecord (AssembleWith Line)
    max_failed_records: int | None = None  # Agent.MaxFailedRecords; None: no isolation
    placeholder: str | None = None  # Agent.FailedRecordPlaceholder

    @property
    def bounds(self) -> bool:
        """Whether bodies carry their record ends (a held MultiRecord body may be halved:
        after a 413, always, or to isolate failed records)."""
        return self.batch_strategy == "MultiRecord" and self.max_payload_bytes > 0

    @classmethod
    def from_job(cls, job: JobSettings) -> PipelineSettings:
        """From a job whose execution parameters are resolved (``ResolvedParams.apply``)."""
        # MaxConcurrentTransforms applies to each replica, as SageMaker applies it to each
        # container: the pipeline keeps that many requests alive for every replica.
        per_replica = job.max_concurrent_transforms or DEFAULT_MAX_CONCURRENT_TRANSFORMS
        inflight = per_replica * len(job.agent.replica_urls)
        payload_mb = DEFAULT_MAX_PAYLOAD_MB if job.max_payload_mb is None else job.max_payload_mb
        return cls(
            split_type=job.input.split_type,
            batch_strategy=job.batch_strategy or DEFAULT_BATCH_STRATEGY,
            max_payload_bytes=payload_mb << 20,
            max_records=job.records_cap or 0,
            max_inflight=inflight,
            files_reading=max(2, inflight),
            files_open=4 * max(2, inflight),
            reorder_buffer_bytes=job.agent.reorder_buffer_bytes,
            gzip=job.input.compression == "Gzip",
            assemble_with=job.output.assemble_with,
            kms_key_id=job.output.kms_key_id,
            require_line_per_record=job.agent.require_line_per_record,
            max_failed_records=job.agent.max_failed_records,
            placeholder=job.agent.failed_record_placeholder,
        )
