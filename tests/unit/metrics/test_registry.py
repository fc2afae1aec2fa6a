"""The run's metrics (agent/metrics): names as Prometheus names them, values read from the
run's state at collection time, the phases of the summary, the Pushgateway's address, and
``/metrics`` served on a port of its own."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent import metrics
from agent.metrics import Metrics
from agent.metrics.serve import MetricsPortError, MetricsServer, Pusher, push_url
from agent.report import Phases

NAME = re.compile(r"bt_agent_[a-z_]+")
UNITS = ("_bytes", "_seconds")


def families(text: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def test_every_name_follows_the_prometheus_conventions() -> None:
    counts = Metrics()
    counts.gauge("bt_agent_replicas_up", "up", lambda: 2)
    found = families(counts.exposition())
    ours = {name: family for name, family in found.items() if name.startswith("bt_agent_")}
    assert len(ours) >= 10
    for name, family in ours.items():
        assert NAME.fullmatch(name), name
        kind = family.type  # type: ignore[attr-defined]
        if kind == "counter":
            assert not name.endswith("_total")  # the parser strips it: the samples carry it
        if "bytes" in name or "seconds" in name:
            assert name.endswith(UNITS) or name.endswith(("_bytes_total",)), name
    assert "process_resident_memory_bytes" in {
        s.name
        for f in found.values()
        for s in f.samples  # type: ignore[attr-defined]
    }


def test_views_read_the_state_when_collected() -> None:
    counts = Metrics()
    state = {"completed": 1.0}
    counts.gauges("bt_agent_files", "files", "status", lambda: dict(state))
    counts.counter("bt_agent_replica_restarts", "restarts", lambda: 3)
    state["completed"] = 4.0
    text = counts.exposition().decode()
    assert 'bt_agent_files{status="completed"} 4.0' in text
    assert "bt_agent_replica_restarts_total 3.0" in text


def test_install_makes_a_fresh_set_the_runs() -> None:
    before = metrics.current()
    fresh = metrics.install(Metrics())
    try:
        assert metrics.current() is fresh is not before
        fresh.records.labels(outcome="transformed").inc(5)
        assert 'bt_agent_records_total{outcome="transformed"} 5.0' in fresh.exposition().decode()
    finally:
        metrics.install(before)


def test_phases_add_up_and_are_said_in_one_sentence() -> None:
    phases = Phases(100.0)
    phases.model, phases.listing, phases.listed, phases.ready = 100.0, 100.0, 100.5, 103.0
    phases.first_request, phases.last_answer, phases.ended = 103.25, 110.0, 110.5
    assert phases.seconds() == {
        "ListingSeconds": 0.5,
        "ModelStartupSeconds": 3.0,
        "FirstRequestSeconds": 3.25,
        "TransformingSeconds": 6.75,
        "CommittingSeconds": 0.5,
        "TotalSeconds": 10.5,
    }
    assert phases.sentence() == (
        "listing took 0.50 s; the model answered /ping 3.00 s after it started (alongside the "
        "listing); the first request went out at 3.25 s; transforming took 6.75 s and "
        "committing 0.50 s; 10.50 s in all"
    )


def test_phases_not_reached_are_none() -> None:
    phases = Phases(time.monotonic())
    phases.ended = phases.started + 1
    seconds = phases.seconds()
    assert seconds["ListingSeconds"] is None and seconds["FirstRequestSeconds"] is None
    assert seconds["TotalSeconds"] == 1.0
    assert phases.sentence() == "no request was sent; 1.00 s in all"


def test_the_push_goes_to_the_jobs_group() -> None:
    assert push_url("http://gw:9091", "my-job", 3) == "http://gw:9091/metrics/job/my-job/instance/3"


def test_metrics_are_served_and_a_taken_port_is_refused() -> None:
    async def main() -> None:
        counts = Metrics()
        counts.records.labels(outcome="failed").inc()
        async with MetricsServer(counts, "127.0.0.1", 0) as server:
            url = f"http://127.0.0.1:{server.port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
            assert b'bt_agent_records_total{outcome="failed"} 1.0' in text
            with pytest.raises(MetricsPortError, match=f"127.0.0.1:{server.port}"):
                async with MetricsServer(counts, "127.0.0.1", server.port):
                    pass

    asyncio.run(main())


def test_a_push_that_fails_is_logged_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[list[bool], int]:
        answers = [503, 503, 200, 200]  # the last: the push on leaving
        seen: list[bytes] = []

        async def push(request: web.Request) -> web.Response:
            seen.append(await request.read())
            return web.Response(status=answers.pop(0))

        app = web.Application()
        app.router.add_put("/metrics/job/{job}/instance/{instance}", push)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            counts = Metrics()
            async with Pusher(counts, f"http://127.0.0.1:{port}", "job-1", 2, 3600) as pusher:
                results = [await pusher.push(), await pusher.push(), await pusher.push()]
            assert b"bt_agent_requests_in_flight" in seen[0]
            return results, pusher.pushes
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="agent.metrics"):
        results, pushes = asyncio.run(main())
    assert results == [False, False, True]
    assert pushes == 2  # the third, and the one on leaving
    failures = [r for r in caplog.records if "cannot push metrics" in r.getMessage()]
    assert len(failures) == 1  # once, though it failed twice in a row
    assert "the Pushgateway answered 503" in failures[0].getMessage()
    assert any("pushed to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
