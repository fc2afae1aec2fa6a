"""Prometheus metrics of a run (README "Watching a run"): ``/metrics`` scraped while the job
runs, the Pushgateway's pushes, and S3 retries counted by reason.

The model (``RecordModel``) answers 413 to bodies over 100 kB, 400 to a body holding a bad
record and 500 to one holding a crashing record, so one run moves every counter: records
transformed and failed, requests by code, retries, splits by reason. The final push must
agree with what the model saw and with the summary.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from tests.support.pushgateway import PushgatewayStandIn, parse, sample
from tests.support.record_model import RecordModel, token
from tests.support.runjob import (
    Agent,
    file_bytes,
    get_objects,
    line,
    model_command,
    output_keys,
    put_objects,
    start_agent,
    transform_job,
)
from tests.support.servers import HOST, SeaweedFS, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

FILES = ("in/a.csv", "in/b.csv", "in/c.csv")
RECORDS = 20_000
BAD, CRASHING = 5, 7  # in every file: a 400 for the first, a 500 for the second
SERVED = re.compile(r"metrics at http://127\.0\.0\.1:(\d+)/metrics")

# Every metric the README lists, as its samples are named in the text format.
NAMES = (
    "bt_agent_records_total",
    "bt_agent_records_read_total",
    "bt_agent_requests_total",
    "bt_agent_request_duration_seconds_bucket",
    "bt_agent_request_duration_seconds_count",
    "bt_agent_requests_in_flight",
    "bt_agent_input_bytes_total",
    "bt_agent_output_bytes_total",
    "bt_agent_files",
    "bt_agent_retries_total",
    "bt_agent_reorder_buffer_bytes",
    "bt_agent_body_splits_total",
    "bt_agent_replicas_up",
    "bt_agent_replica_restarts_total",
    "bt_agent_shards",
    "bt_agent_phase_seconds",
    "process_resident_memory_bytes",
)


@pytest.fixture
def pushgateway() -> Iterator[PushgatewayStandIn]:
    gateway = PushgatewayStandIn()
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def sample_names(families: dict[str, object]) -> set[str]:
    return {s.name for family in families.values() for s in family.samples}  # type: ignore[attr-defined]


def scrape(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as answer:
            return parse(answer.read().decode())  # type: ignore[return-value]
    except OSError:
        return None  # not up yet, or closed at the run's end


def scrape_until_done(agent: Agent) -> list[dict[str, object]]:
    """Every scrape of the agent's /metrics, ten a second, from the moment it is served."""
    assert wait_until(lambda: bool(SERVED.findall(agent.log())), 30.0), agent.log()
    port = int(SERVED.findall(agent.log())[0])
    scrapes = []
    while agent.process.popen is not None and agent.process.popen.poll() is None:
        if (families := scrape(port)) is not None:
            scrapes.append(families)
        time.sleep(0.1)
    return scrapes


def test_metrics_are_served_during_the_run_and_pushed_at_its_end(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    pushgateway: PushgatewayStandIn,
    tmp_path: Path,
) -> None:
    records = [line(token(n) + b",%d\n" % n) for n in range(RECORDS)]
    data = file_bytes(records)
    client = s3_server.sync_client()
    put_objects(client, bucket, dict.fromkeys(FILES, data))
    record_model.refuse_over = 100_000
    record_model.set_bad([BAD])
    record_model.server_error = frozenset([CRASHING])
    record_model.delay_seconds = 0.05
    job = transform_job(
        "metrics",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=record_model.url,
        split_type="Line",
        batch_strategy="MultiRecord",
        assemble_with="Line",
        max_payload_mb=1,
        max_concurrent=2,
        max_retries=1,
        agent={
            "MaxFailedRecords": -1,
            "MetricsPushgatewayUrl": pushgateway.url,
            "MetricsPushIntervalSeconds": 1,
        },
    )
    agent = start_agent(
        job, tmp_path, args=("--metrics-port", "0", "--metrics-address", "127.0.0.1")
    )
    try:
        scrapes = scrape_until_done(agent)
        run = agent.wait(120.0)
    finally:
        agent.kill()
    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))

    # Scraped while it ran: every metric is there, and values stay within their bounds.
    assert scrapes, run.log
    assert set(NAMES) <= sample_names(scrapes[-1]), sorted(sample_names(scrapes[-1]))
    for families in scrapes:
        assert 0 <= sample(families, "bt_agent_requests_in_flight") <= 2
        files = {
            s: sample(families, "bt_agent_files", status=s)
            for s in ("pending", "in_progress", "completed")
        }
        assert sum(files.values()) in (0, len(FILES)), files  # 0: before the plan is known
        assert sample(families, "bt_agent_records_read_total") <= RECORDS * len(FILES)
        assert sample(families, "process_resident_memory_bytes") > 0
    assert any(sample(f, "bt_agent_files", status="in_progress") >= 1 for f in scrapes)
    assert any(0 < sample(f, "bt_agent_records_read_total") for f in scrapes)

    # Pushed: periodically and once at the end, under the job's grouping key.
    pushes = pushgateway.pushes
    assert len(pushes) >= 2, run.log
    last = pushes[-1]
    assert (last.job, last.instance) == ("metrics", "0")
    assert last.content_type == CONTENT_TYPE_LATEST
    statuses = record_model.statuses
    summary = run.summary
    assert summary is not None
    failed = len(FILES) * 2
    assert last.value("bt_agent_records_total", outcome="transformed") == RECORDS * 3 - failed
    assert last.value("bt_agent_records_total", outcome="failed") == failed
    assert last.value("bt_agent_records_total", outcome="unfinished") == 0
    assert last.value("bt_agent_records_read_total") == RECORDS * len(FILES)
    assert summary["FailedRecords"] == failed
    for code in (200, 400, 413, 500):
        assert statuses[code] > 0, statuses
        assert last.value("bt_agent_requests_total", code=str(code)) == statuses[code]
    assert last.value("bt_agent_request_duration_seconds_count") == sum(statuses.values())
    retried = last.value("bt_agent_retries_total", component="model", reason="500")
    assert retried > 0
    # The summary counts requests; the model saw their attempts, retries included.
    assert summary["Requests"] + retried == sum(statuses.values())
    assert last.value("bt_agent_body_splits_total", reason="payload_too_large") >= len(FILES)
    assert last.value("bt_agent_body_splits_total", reason="isolation") > 0
    assert last.value("bt_agent_input_bytes_total") == len(data) * len(FILES)
    assert last.value("bt_agent_input_bytes_total") == summary["InputBytes"]
    out_bytes = sum(len(v) for k, v in outputs.items() if k.endswith(".out"))
    assert last.value("bt_agent_output_bytes_total") == out_bytes == summary["OutputBytes"]
    assert last.value("bt_agent_files", status="completed") == len(FILES)
    assert last.value("bt_agent_files", status="pending") == 0
    assert last.value("bt_agent_requests_in_flight") == 0
    assert last.value("bt_agent_reorder_buffer_bytes") == 0
    assert last.value("bt_agent_replicas_up") == 1
    phases = summary["Phases"]
    for phase, key in (
        ("listing", "ListingSeconds"),
        ("model_startup", "ModelStartupSeconds"),
        ("first_request", "FirstRequestSeconds"),
        ("transforming", "TransformingSeconds"),
    ):
        assert phases[key] is not None and phases[key] >= 0, phases
        assert last.value("bt_agent_phase_seconds", phase=phase) >= 0
    assert phases["TransformingSeconds"] > 0
    assert "where the time went: listing took" in run.log


def test_s3_retries_are_counted_by_reason(
    seaweedfs_factory: Callable[[], SeaweedFS],
    s3_env: dict[str, str],
    record_model: RecordModel,
    pushgateway: PushgatewayStandIn,
    tmp_path: Path,
) -> None:
    server = seaweedfs_factory()
    client = server.sync_client()
    client.create_bucket(Bucket="retries")
    data = file_bytes([line(token(n) + b"," + b"r" * 40 + b"\n") for n in range(60_000)])
    put_objects(client, "retries", {"in/a.csv": data})
    record_model.delay_seconds = 0.2  # the model paces the run: S3 is needed after it dies
    job = transform_job(
        "metrics-s3",
        "s3://retries/in/",
        "s3://retries/out",
        model_url=record_model.url,
        split_type="Line",
        max_payload_mb=1,
        max_concurrent=1,
        agent={"MetricsPushgatewayUrl": pushgateway.url, "MetricsPushIntervalSeconds": 1},
    )
    agent = start_agent(job, tmp_path, env=server.env())
    try:
        assert wait_until(lambda: record_model.requests > 0, 30.0), agent.log()
        server.stop(grace_seconds=0)
        met = wait_until(lambda: "; retrying in " in agent.log(), 30.0)
        server.start()
        run = agent.wait(90.0)
    finally:
        agent.kill()
        server.stop(grace_seconds=0)
    assert met, run.log
    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    last = pushgateway.pushes[-1]
    retried = {
        s.labels["reason"]: s.value
        for s in last.families["bt_agent_retries"].samples
        if s.name == "bt_agent_retries_total" and s.labels["component"] == "s3"
    }
    assert retried and all(
        reason in ("connection", "timeout") or reason.isdigit() or reason[0].isupper()
        for reason in retried
    ), retried
    assert sum(retried.values()) >= 1


def test_a_metrics_port_in_use_fails_the_run_before_anything_is_read(
    s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        job = transform_job(
            "metrics-port",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/out",
            model_url="http://127.0.0.1:9",
            agent={
                "MetricsPort": port,
                "MetricsAddress": "127.0.0.1",
                "ModelCommand": model_command(),
            },
        )
        run = start_agent(job, tmp_path).wait(60.0)
    assert run.returncode == 1, run.explain()
    assert run.status == "Failed"
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in run.summary["FailureReason"]  # type: ignore[index]
    assert "choose another Agent.MetricsPort or --metrics-port" in run.log
    assert run.model_pids == []  # the model command never started
