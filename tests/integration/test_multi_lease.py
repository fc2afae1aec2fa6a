"""Lease coordination with several real agent processes (docs/design.md §4.4), TTL 3 s.

* Three instances; the one holding the big file is SIGKILLed while its multipart upload is
  open. The two others finish that file once its lease has stood still a whole TTL: every
  ``.out`` is right and has exactly one version (bucket versioning on: nothing was
  committed twice), and the killed instance's upload was aborted (none left open).
* An instance paused (SIGSTOP) past its TTL and resumed (SIGCONT) after another took its
  file over and committed it: it stops that file without committing, says so, exits 0.
* Two instances started at the same instant over one file: exactly one processes it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.multirun import (
    BodyIndex,
    completion_records,
    enable_versioning,
    holder_pid,
    leases,
    list_keys,
    output_versions,
    rows_of,
    show,
    state_prefix,
    status_of,
    summary_inputs,
    wait_for,
)
from tests.support.runjob import (
    MIB,
    get_objects,
    open_uploads,
    output_keys,
    put_objects,
    start_agent,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

TTL_SECONDS = 3
RENEW_SECONDS = TTL_SECONDS / 6  # LeaseSettings.for_ttl


def lease_job(bucket: str, model: ModelServer, name: str, concurrency: int) -> dict[str, Any]:
    return transform_job(
        name,
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=1,
        max_concurrent=concurrency,
        agent={"Coordination": "Lease", "LeaseTTLSeconds": TTL_SECONDS},
    )


def expected_outputs(files: dict[str, bytes]) -> dict[str, bytes]:
    return {key.replace("in/", "out/") + ".out": data for key, data in files.items()}


def test_a_killed_instances_file_is_finished_by_the_others_after_the_ttl(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    # big.csv is 12 bodies of ~1 MiB: its output passes the 8 MiB first part, so its holder
    # has a multipart upload open for the last bodies; the small files are one body each.
    files = {"in/big.csv": rows_of("big", 170_000, 120)}
    files |= {f"in/small-{n}.csv": rows_of(f"small-{n}", 400 + 50 * n) for n in range(5)}
    assert 11 * MIB < len(files["in/big.csv"]) < 12 * MIB
    client = s3_server.sync_client()
    enable_versioning(client, bucket)
    put_objects(client, bucket, files)
    model.control(delay_ms=300)
    job = lease_job(bucket, model, "lease-kill", concurrency=1)
    big = f"s3://{bucket}/in/big.csv"
    uploads = state_prefix(job) + "uploads/"

    agents = [start_agent(job, tmp_path) for _ in range(3)]
    try:
        by_pid = {agent.pid: agent for agent in agents}
        wait_for(lambda: list_keys(client, bucket, uploads), 40, "big.csv's upload", *agents)
        holder = next(lease for lease in leases(client, bucket, job) if lease["Input"] == big)
        victim = by_pid[holder_pid(holder)]
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        model.control(delay_ms=0)
        during = status_of(job, tmp_path)
        show(
            "bt-agent status while a dead instance's lease runs out (Lease, TTL 3 s)", during.stdout
        )

        def taken_over() -> dict[str, Any] | None:
            return next(
                (
                    lease
                    for lease in leases(client, bucket, job)
                    if lease["Input"] == big and holder_pid(lease) != victim.pid
                ),
                None,
            )

        taker = wait_for(taken_over, 30, "the takeover of big.csv", *agents)
        waited = time.monotonic() - killed_at
        survivors = [agent for agent in agents if agent is not victim]
        runs = [agent.wait(60) for agent in survivors]
        killed = victim.wait(5)
    finally:
        for agent in agents:
            agent.kill()

    assert killed.returncode == -signal.SIGKILL
    assert during.returncode == 0 and "InProgress" in during.stdout, during.stderr
    # The lease's last renewal came at most one renewal interval before the kill, and the
    # taker waited a whole TTL after that.
    assert waited >= TTL_SECONDS - RENEW_SECONDS, f"taken over {waited:.2f} s after the kill"
    for run in runs:
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    # One completion record per file, each by the instance whose summary lists it: the
    # victim's files finished before the kill stay done, and nobody redid them.
    recorded_by = {
        record["Input"]: holder_pid(record) for record in completion_records(client, bucket, job)
    }
    assert set(recorded_by) == {f"s3://{bucket}/{key}" for key in files}
    for agent, run in zip(survivors, runs, strict=True):
        assert summary_inputs(run, "Completed") == {
            uri for uri, pid in recorded_by.items() if pid == agent.pid
        }
    assert recorded_by[big] != victim.pid
    taker_run = runs[[agent.pid for agent in survivors].index(holder_pid(taker))]
    assert big in summary_inputs(taker_run, "Completed")
    assert f"took the lease over from {holder['Instance']}" in taker_run.log
    assert "aborted 1 upload(s) of its previous holder" in taker_run.log

    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == expected_outputs(files)
    assert output_versions(client, bucket) == {key: 1 for key in outputs}
    assert open_uploads(client, bucket) == []
    assert list_keys(client, bucket, uploads) == []
    assert leases(client, bucket, job) == []
    sent = BodyIndex(files).per_file(model.requests())
    assert {key: n for key, n in sent.items() if key != "in/big.csv"} == {
        key: 1 for key in files if key != "in/big.csv"
    }
    assert 12 + 9 <= sent["in/big.csv"] <= 24  # the victim got past 8 MiB; the taker sent all
    after = status_of(job, tmp_path)
    show("bt-agent status after the run (Lease)", after.stdout)
    assert after.returncode == 0 and '"TransformJobStatus": "Completed"' in after.stdout


def test_a_paused_holder_does_not_commit_over_the_instance_that_took_its_file(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    files = {"in/only.csv": rows_of("only", 40_000, 100)}  # 3 bodies of ~1 MiB
    client = s3_server.sync_client()
    enable_versioning(client, bucket)
    put_objects(client, bucket, files)
    index = BodyIndex(files)
    model.control(delay_ms=1000)
    job = lease_job(bucket, model, "lease-pause", concurrency=1)

    paused = start_agent(job, tmp_path)
    agents = [paused]
    try:
        wait_for(lambda: leases(client, bucket, job), 30, "the first claim", paused)
        wait_for(lambda: model.requests(), 10, "the first request", paused)
        paused.signal(signal.SIGSTOP)
        model.control(delay_ms=0)
        taker = start_agent(job, tmp_path)
        agents.append(taker)
        taker_run = taker.wait(40)  # takes over after a TTL, transforms, commits, ends
        paused.signal(signal.SIGCONT)
        paused_run = paused.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            paused.signal(signal.SIGCONT)  # never leave a stopped process behind
        for agent in agents:
            agent.kill()

    assert (taker_run.returncode, taker_run.status) == (0, "Completed"), taker_run.explain()
    assert "took the lease over from" in taker_run.log
    uri = f"s3://{bucket}/in/only.csv"
    assert summary_inputs(taker_run, "Completed") == {uri}
    # The paused instance lost the file, said so, committed nothing, and is no failure.
    assert paused_run.returncode == 0, paused_run.explain()
    assert paused_run.file(uri)["Status"] == "Lost", paused_run.explain()
    assert "lease lost" in paused_run.log
    lost_lines = [row for row in paused_run.log.splitlines() if "status=Lost" in row]
    assert lost_lines and all(" WARNING " in row for row in lost_lines), paused_run.log
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == expected_outputs(files)
    assert output_versions(client, bucket) == {"out/only.csv.out": 1}
    assert open_uploads(client, bucket) == []
    sent = index.per_file(model.requests())
    assert sent["in/only.csv"] > index.expected["in/only.csv"]  # the paused one had begun


def test_two_instances_started_at_the_same_instant_over_one_file(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    files = {"in/one.csv": rows_of("one", 500)}
    client = s3_server.sync_client()
    put_objects(client, bucket, files)
    model.control(delay_ms=2000)  # the winner still works when the loser looks
    job = lease_job(bucket, model, "lease-race", concurrency=1)

    agents = [start_agent(job, tmp_path) for _ in range(2)]
    try:
        runs = [agent.wait(30) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()

    uri = f"s3://{bucket}/in/one.csv"
    for run in runs:
        assert (run.returncode, run.status) == (0, "Completed"), run.explain()
        assert "1 of 1 files to do, claimed by lease" in run.log  # both raced for it
    winners = [run for run in runs if run.files()]
    assert len(winners) == 1, [run.explain() for run in runs]
    assert summary_inputs(winners[0], "Completed") == {uri}
    loser = runs[1 - runs.index(winners[0])]
    assert loser.summary is not None and loser.summary["FilesTotal"] == 0
    index = BodyIndex(files)
    assert index.per_file(model.requests()) == index.sent_once(files)
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == expected_outputs(files)
