"""Faults of the model and of S3 in a run (docs/design.md §1.7, §1.9, §6), via ``python -m agent``.

Transient model faults (5xx, a reset or a truncated answer) are retried and the output is
exact; a 4xx fails its file at once and only that file; a request slower than the timeout
fails its file; S3 going away mid-read and coming back costs nothing but time; a model
command that exits (at start-up or mid-job) fails every unfinished file at once with its
exit status and last output; SIGTERM stops the job with nothing partial left behind.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.runjob import (
    MIB,
    Record,
    get_objects,
    line,
    local_outputs,
    model_command,
    open_uploads,
    output_keys,
    put_objects,
    request_bodies,
    run_agent,
    start_agent,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS, free_port, process_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]


def csv(seed: int, count: int, width: int = 60) -> bytes:
    """Rows distinct to ``seed`` (so each file's bodies are its own)."""
    return b"".join(b"%d,%d,%s\n" % (seed, n, b"v" * (n % width)) for n in range(count))


def rows(data: bytes) -> list[Record]:
    """The records of SplitType Line."""
    return [line(row) for row in data.splitlines(keepends=True)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize(
    "fault",
    [{"fault": "status", "status": 500}, {"fault": "reset"}, {"fault": "truncated"}],
    ids=["status-500", "reset-mid-response", "truncated-answer"],
)
def test_a_transient_model_fault_is_retried_and_the_output_is_exact(
    fault: dict[str, object],
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
) -> None:
    files = {"in/a.csv": csv(1, 40_000), "in/b.csv": csv(2, 100)}  # a: 2 bodies of <= 1 MiB
    put_objects(s3_server.sync_client(), bucket, files)
    model.control(fault_count=1, **fault)
    job = transform_job(
        "transient",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        max_payload_mb=1,
        max_concurrent=2,
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert "attempt 1/4" in run.log
    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {"out/a.csv.out": files["in/a.csv"], "out/b.csv.out": files["in/b.csv"]}
    requests = model.requests()
    bodies = [b for data in files.values() for b in request_bodies(rows(data), "MultiRecord", MIB)]
    assert len(requests) == len(bodies) + 1
    faulty = [entry for entry in requests if entry["answer"] != 200]
    assert [entry["answer"] for entry in faulty] == [fault.get("status") or fault["fault"]]
    assert [entry["body_sha256"] for entry in requests].count(faulty[0]["body_sha256"]) == 2


def test_a_4xx_fails_its_file_at_once_and_only_that_file(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    files = {f"in/{name}.csv": csv(n, 100) for n, name in enumerate("abc")}
    where: dict[str, tuple[str, int, int]] = {}  # each record's sha: file and byte range
    for key, data in files.items():
        start = 0
        for record in rows(data):
            where[sha(record.raw)] = (key, start, start + len(record.raw))
            start += len(record.raw)
    put_objects(s3_server.sync_client(), bucket, files)
    model.control(fault="status", status=400, fault_count=1, delay_ms=5)
    job = transform_job(
        "client-error",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        batch_strategy="SingleRecord",
        max_concurrent=4,
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    requests = model.requests()
    refused = next(entry for entry in requests if entry["answer"] != 200)
    assert refused["answer"] == 400
    failed_key, start, end = where[refused["body_sha256"]]
    assert [entry["body_sha256"] for entry in requests].count(refused["body_sha256"]) == 1
    failed_uri = f"s3://{bucket}/{failed_key}"
    entry = run.file(failed_uri)
    assert entry["Status"] == "Failed"
    reason = entry["FailureReason"]
    for part in (failed_uri, f"bytes [{start}, {end})", "status 400", "fault: status 400"):
        assert part in reason, reason
    assert run.summary is not None and "1 of 3 files failed" in run.summary["FailureReason"]
    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, output_keys(client, bucket, "out/"))
    assert outputs == {
        key.replace("in/", "out/") + ".out": data
        for key, data in files.items()
        if key != failed_key
    }
    assert open_uploads(client, bucket) == []
    # The failed file's cancelled requests gave their slots back: the others used all four.
    assert max(entry["in_flight"] for entry in requests[len(requests) // 2 :]) == 4


def test_a_request_slower_than_the_timeout_fails_its_file(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    put_objects(s3_server.sync_client(), bucket, {"in/slow.csv": csv(1, 10)})
    model.control(delay_ms=2_000)
    job = transform_job(
        "timeout",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        timeout_seconds=1,
        max_retries=0,
    )

    run = run_agent(job, tmp_path)

    try:
        assert (run.returncode, run.status) == (1, "Failed"), run.explain()
        reason = run.file(f"s3://{bucket}/in/slow.csv")["FailureReason"]
        assert "no complete answer within 1 s" in reason, reason
        assert "InvocationsTimeoutInSeconds" in reason
        assert output_keys(s3_server.sync_client(), bucket, "out/") == []
    finally:  # the model still works on the abandoned request: let it finish
        assert wait_until(lambda: all(e["done"] for e in model.requests()), 5.0)


# ----------------------------------------------------------------------------- S3


def test_s3_killed_and_restarted_mid_run(
    seaweedfs_factory: Callable[[], SeaweedFS],
    s3_env: dict[str, str],
    model: ModelServer,
    tmp_path: Path,
) -> None:
    server = seaweedfs_factory()
    client = server.sync_client()
    client.create_bucket(Bucket="restart")
    # ~80 MiB, more than one ranged GET (64 MiB): the read and the multipart upload of the
    # output both still need S3 when it dies after the first request.
    data = b"".join(b"%07d,%s\n" % (n, b"r" * (n % 90)) for n in range(1_500_000))
    put_objects(client, "restart", {"in/big.csv": data})
    model.control(delay_ms=300)  # the pipeline, not the store, paces the read
    job = transform_job(
        "s3-restart",
        "s3://restart/in/",
        "s3://restart/out",
        model_url=model.url,
        split_type="Line",
        max_payload_mb=4,
        max_concurrent=2,
    )

    agent = start_agent(job, tmp_path, env=server.env())
    try:
        assert wait_until(lambda: model.log()["invocations"] > 0, 30.0), agent.log()
        server.stop(grace_seconds=0)  # SIGKILL: a crash, in the middle of the run
        stopped_at = model.log()["invocations"]
        # S3 stays down until the agent has met the outage and is retrying (which call meets
        # it first, the read or the upload, depends on how much the socket buffers held).
        met = wait_until(lambda: "; retrying in " in agent.log(), 30.0)
        server.start()
        run = agent.wait(90.0)
        output = client.get_object(Bucket="restart", Key="out/big.csv.out")["Body"].read()
        uploads = open_uploads(client, "restart")
    finally:
        agent.kill()
        server.stop(grace_seconds=0)  # private and done with: no need to wait for a clean stop

    assert met, run.log
    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert stopped_at < len(request_bodies(rows(data), "MultiRecord", 4 * MIB))
    assert output == data
    assert uploads == []


# ----------------------------------------------------------------------------- the model command


def test_a_model_command_that_exits_at_start_up_fails_every_file(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.csv", "b.csv"):
        (source / name).write_bytes(b"1,2\n")
    script = "import sys; print('loading /opt/ml/model'); sys.exit('CUDA error: no device')"
    job = transform_job(
        "exits-at-start",
        f"{source}/",
        str(tmp_path / "out"),
        model_url=f"http://127.0.0.1:{free_port()}",
        split_type="Line",
        agent={"ModelCommand": [sys.executable, "-c", script]},
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.seconds < 10
    assert len(run.files()) == 2
    for entry in run.files().values():
        assert entry["Status"] == "Failed"
        assert "exited with status 1" in entry["FailureReason"]
        assert "CUDA error: no device" in entry["FailureReason"]
    assert local_outputs(tmp_path / "out") == {}
    assert run.model_pids and run.leftovers == []


def test_a_model_command_that_dies_mid_job_fails_the_unfinished_files_at_once(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for n in range(6):
        (source / f"f{n}.csv").write_bytes(csv(n, 5))
    port = free_port()
    job = transform_job(
        "dies-mid-job",
        f"{source}/",
        str(tmp_path / "out"),
        model_url=f"http://127.0.0.1:{port}",
        split_type="Line",
        batch_strategy="SingleRecord",
        max_concurrent=2,
        agent={"ModelCommand": model_command("--port", str(port), "--exit-after", "3")},
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert run.seconds < 10
    for entry in run.files().values():  # 5 records each, 3 answers in all: none finished
        assert entry["Status"] == "Failed", entry
        assert "exited with status 3" in entry["FailureReason"], entry
        assert "exiting after 3 invocations" in entry["FailureReason"], entry
    assert local_outputs(tmp_path / "out") == {}
    assert run.model_pids and run.leftovers == []


def test_sigterm_stops_the_job_and_leaves_nothing_behind(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    small = csv(0, 10)
    big = b"".join(b"%07d,%s\n" % (n, b"s" * (n % 90)) for n in range(400_000))  # ~20 MiB
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/a-small.csv": small, "in/b-big.csv": big})
    port = free_port()
    job = transform_job(
        "sigterm",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=f"http://127.0.0.1:{port}",
        split_type="Line",
        max_payload_mb=1,
        max_concurrent=2,
        agent={"ModelCommand": model_command("--port", str(port), "--delay-ms", "100")},
    )

    agent = start_agent(job, tmp_path)
    try:
        # A multipart upload is open once the big output has a full 8 MiB part.
        assert wait_until(lambda: open_uploads(client, bucket) != [], 30.0), agent.log()
        model_pids = agent.model_pids()
        # From now on every answer takes ten minutes: a stop that waited for the model's
        # answers (or for the file) would not end; agent.wait's 15 s only guards a hang.
        slow_down = urllib.request.Request(
            f"http://127.0.0.1:{port}/_control",
            data=b'{"delay_ms": 600000}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(slow_down, timeout=10).close()
        agent.signal(signal.SIGTERM)
        run = agent.wait(15.0)  # uploads aborted and the model stopped, not waited for
    finally:
        agent.kill()

    assert (run.returncode, run.status) == (143, "Stopped"), run.explain()
    assert run.file(f"s3://{bucket}/in/b-big.csv")["Status"] == "Stopped"
    assert run.file(f"s3://{bucket}/in/a-small.csv")["Status"] == "Completed"
    assert output_keys(client, bucket, "out/") == ["out/a-small.csv.out"]  # no partial .out
    assert open_uploads(client, bucket) == []
    assert model_pids and run.leftovers == []
    assert not any(process_alive(pid) for pid in model_pids)
