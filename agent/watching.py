"""What the metrics read from a run as it goes: files and shards by status, the reorder
buffer, the replicas, the phases (docs/design.md §8).

``Watched`` is filled in by the runner as the run makes each object; until then its
metrics read zero. Every value is read when the registry is collected, from the objects
that hold it, so the metrics never disagree with the summary.
"""

from __future__ import annotations

from agent.metrics import Metrics
from agent.model.replicas import ReplicaSet
from agent.pipeline import Pipeline
from agent.report import JobSummary
from agent.results import COMPLETED, FAILED, IN_PROGRESS, LOST, STOPPED

FILE_STATUSES = {
    IN_PROGRESS: "in_progress",
    COMPLETED: "completed",
    FAILED: "failed",
    STOPPED: "stopped",
    LOST: "lost",
}
PHASES = {
    "ListingSeconds": "listing",
    "ModelStartupSeconds": "model_startup",
    "FirstRequestSeconds": "first_request",
    "TransformingSeconds": "transforming",
    "CommittingSeconds": "committing",
}


class Watched:
    """What the metrics read from the run as it goes (``Metrics.watch``): the objects
    are filled in as the run makes them."""

    def __init__(self, summary: JobSummary) -> None:
        self.summary = summary
        self.planned = 0  # whole files in this instance's to-do list
        self.pipeline: Pipeline | None = None
        self.replicas: ReplicaSet | None = None

    def watch(self, counts: Metrics) -> None:
        counts.gauges(
            "bt_agent_files",
            "Files by status (pending: files this instance may still take)",
            "status",
            self.files,
        )
        counts.gauges(
            "bt_agent_shards", "Shards this instance took, by status", "status", self.shards
        )
        counts.gauge(
            "bt_agent_reorder_buffer_bytes",
            "Bytes of answers that came early and wait for their turn",
            lambda: 0 if self.pipeline is None else self.pipeline.budget.waiting_bytes,
        )
        counts.gauge(
            "bt_agent_replicas_up",
            "Model replicas taking requests",
            lambda: 0 if self.replicas is None else self.replicas.up_count,
        )
        counts.counter(
            "bt_agent_replica_restarts",
            "Restarts of model replicas (Agent.ReplicaRestarts)",
            lambda: 0 if self.replicas is None else self.replicas.restart_count,
        )
        counts.gauges(
            "bt_agent_phase_seconds",
            "Seconds of each phase of the run so far (the summary's Phases)",
            "phase",
            self.phases,
        )

    def files(self) -> dict[str, float]:
        found = dict.fromkeys(("pending", *FILE_STATUSES.values()), 0.0)
        started = 0
        for entry in self.summary.files:
            if entry.shard is None:
                started += 1
                found[FILE_STATUSES.get(entry.status, "in_progress")] += 1
        found["pending"] = max(self.planned - started, 0)
        return found

    def shards(self) -> dict[str, float]:
        found = dict.fromkeys(FILE_STATUSES.values(), 0.0)
        for entry in self.summary.files:
            if entry.shard is not None:
                found[FILE_STATUSES.get(entry.status, "in_progress")] += 1
        return found

    def phases(self) -> dict[str, float]:
        seconds = self.summary.phases.seconds()
        return {
            PHASES[key]: value
            for key, value in seconds.items()
            if key in PHASES and value is not None
        }
