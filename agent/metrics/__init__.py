"""What a run counts for Prometheus: one registry per run, its names under ``bt_agent_``.

The counters and the latency histogram are moved where things happen (the model client,
the S3 retries, the pipeline). What is a state rather than an event (files and shards
by status, the reorder buffer, replicas up, phase timings) is read when the registry is
collected, from the objects that hold it (``Metrics.watch``), so nothing keeps a second
copy up to date. The exposition format is prometheus-client's (``exposition``); the
server and the Pushgateway client that carry it are ``agent/metrics/serve.py``'s
(docs/design.md §8). Labels take values from small fixed sets (a status, an HTTP code,
an S3 error code): never a file name, so a run of a million files has as many series
as a run of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "current", "install"]

# Seconds: from a quick model (a few ms) to InvocationsTimeoutInSeconds' upper range.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

View = Callable[[], Iterable[Metric]]

# No ``_created`` series beside each counter and histogram: a batch run's start time is in
# the summary, and pushed series should be only the ones the README lists.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Views(Collector):
    """The metrics read at collection time from the run's own state."""

    def __init__(self) -> None:
        self.views: list[View] = []

    def collect(self) -> Iterator[Metric]:
        for view in self.views:
            yield from view()


class Metrics:
    """One run's metrics. ``current()`` is the run's; each name is documented in the
    README's "Watching a run"."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "bt_agent_records",
            "Records by outcome: transformed (in a completed file or shard, not failed), "
            "failed (failed alone: Agent.MaxFailedRecords), unfinished (in a unit that "
            "failed, stopped or was lost)",
            ["outcome"],
            registry=r,
        )
        self.records_read = Counter(
            "bt_agent_records_read",
            "Records cut from the inputs and sent to the model",
            registry=r,
        )
        self.requests = Counter(
            "bt_agent_requests",
            "/invocations attempts answered, by HTTP status code",
            ["code"],
            registry=r,
        )
        self.request_failures = Counter(
            "bt_agent_request_failures",
            "/invocations attempts without an HTTP answer, by reason (timeout, connection)",
            ["reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "bt_agent_request_duration_seconds",
            "Duration of one /invocations attempt, from sending the body to the answer's end",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "bt_agent_requests_in_flight",
            "/invocations attempts in flight",
            registry=r,
        )
        self.input_bytes = Counter(
            "bt_agent_input_bytes",
            "Input bytes read and sent on (decompressed bytes for gzip input)",
            registry=r,
        )
        self.output_bytes = Counter(
            "bt_agent_output_bytes",
            "Bytes written to the outputs (.out files)",
            registry=r,
        )
        self.retries = Counter(
            "bt_agent_retries",
            "Retried requests by component (model, s3) and reason (HTTP code or S3 error "
            "code, timeout, connection)",
            ["component", "reason"],
            registry=r,
        )
        self.body_splits = Counter(
            "bt_agent_body_splits",
            "Request bodies cut in halves, by reason (payload_too_large: a 413; "
            "isolation: a failed request, Agent.MaxFailedRecords)",
            ["reason"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, …
        self._views = _Views()
        r.register(self._views)

    def watch(self, view: View) -> None:
        """Add metrics read from the run's state each time the registry is collected."""
        self._views.views.append(view)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value ``read()`` gives at collection time."""

        def view() -> Iterator[Metric]:
            yield GaugeMetricFamily(name, documentation, value=read())

        self.watch(view)

    def gauges(
        self, name: str, documentation: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """A gauge per label value, as ``read()`` gives them at collection time."""

        def view() -> Iterator[Metric]:
            family = GaugeMetricFamily(name, documentation, labels=[label])
            for value, number in read().items():
                family.add_metric([value], number)
            yield family

        self.watch(view)

    def counter(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter (``name`` without ``_total``) whose value ``read()`` gives."""

        def view() -> Iterator[Metric]:
            yield CounterMetricFamily(name, documentation, value=read())

        self.watch(view)

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


_current = Metrics()


def current() -> Metrics:
    """The running job's metrics (a fresh, unwatched set before ``install``)."""
    return _current


def install(metrics: Metrics) -> Metrics:
    """Make ``metrics`` the run's; returns it."""
    global _current
    _current = metrics
    return metrics
