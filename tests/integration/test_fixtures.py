"""The real-server fixtures do what later integration tests rely on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from tests.support.servers import (
    LIVE,
    ModelServer,
    SeaweedFS,
    ServerProcess,
    group_alive,
    ports_free,
    process_alive,
)

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

MiB = 1 << 20


def _error_code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


# ----------------------------------------------------------------------------- S3


async def test_object_round_trips(s3_server: SeaweedFS, bucket: str) -> None:
    async with s3_server.client() as s3:
        body = b"a,b\n1,2\n"
        put = await s3.put_object(
            Bucket=bucket, Key="in/a.csv", Body=body, Metadata={"input-etag": "x"}
        )
        got = await s3.get_object(Bucket=bucket, Key="in/a.csv")
        assert await got["Body"].read() == body
        assert got["ETag"] == put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert got["Metadata"] == {"input-etag": "x"}
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="in/")
        assert [item["Key"] for item in listed["Contents"]] == ["in/a.csv"]


async def test_multipart_upload_round_trips(s3_server: SeaweedFS, bucket: str) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    async with s3_server.client() as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="big.out")
        done = []
        for number, part in enumerate(parts, start=1):
            answer = await s3.upload_part(
                Bucket=bucket,
                Key="big.out",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=part,
            )
            done.append({"ETag": answer["ETag"], "PartNumber": number})
        finished = await s3.complete_multipart_upload(
            Bucket=bucket,
            Key="big.out",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": done},
        )
        assert finished["ETag"].endswith('-3"')
        got = await s3.get_object(Bucket=bucket, Key="big.out")
        assert hashlib.sha256(await got["Body"].read()).digest() == (
            hashlib.sha256(b"".join(parts)).digest()
        )
        across = await s3.get_object(Bucket=bucket, Key="big.out", Range="bytes=5242878-5242881")
        assert await across["Body"].read() == parts[0][-2:] + parts[1][:2]


async def test_multipart_parts_below_5_mib_are_refused(s3_server: SeaweedFS, bucket: str) -> None:
    async with s3_server.client() as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="small.out")
        done = []
        for number in (1, 2):
            answer = await s3.upload_part(
                Bucket=bucket,
                Key="small.out",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=b"x" * 10,
            )
            done.append({"ETag": answer["ETag"], "PartNumber": number})
        with pytest.raises(ClientError) as refused:
            await s3.complete_multipart_upload(
                Bucket=bucket,
                Key="small.out",
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": done},
            )
        assert _error_code(refused.value) == "EntityTooSmall"
        await s3.abort_multipart_upload(Bucket=bucket, Key="small.out", UploadId=upload["UploadId"])
        assert "Uploads" not in await s3.list_multipart_uploads(Bucket=bucket)


async def test_conditional_writes_are_enforced(s3_server: SeaweedFS, bucket: str) -> None:
    async with s3_server.client(retries={"max_attempts": 1}) as s3:
        first = await s3.put_object(Bucket=bucket, Key="lease", Body=b"one", IfNoneMatch="*")
        with pytest.raises(ClientError) as second:
            await s3.put_object(Bucket=bucket, Key="lease", Body=b"two", IfNoneMatch="*")
        assert _error_code(second.value) == "PreconditionFailed"
        assert second.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

        with pytest.raises(ClientError) as stale:
            await s3.put_object(Bucket=bucket, Key="lease", Body=b"two", IfMatch=f'"{"0" * 32}"')
        assert _error_code(stale.value) == "PreconditionFailed"
        renewed = await s3.put_object(
            Bucket=bucket, Key="lease", Body=b"two", IfMatch=first["ETag"]
        )
        assert renewed["ETag"] != first["ETag"]
        got = await s3.get_object(Bucket=bucket, Key="lease")
        assert await got["Body"].read() == b"two"


async def test_only_one_of_racing_if_none_match_writes_wins(
    s3_server: SeaweedFS, bucket: str
) -> None:
    async with s3_server.client(retries={"max_attempts": 1}) as s3:

        async def claim(n: int) -> str:
            try:
                await s3.put_object(Bucket=bucket, Key="claim", Body=b"%d" % n, IfNoneMatch="*")
            except ClientError as error:
                return _error_code(error)
            return "won"

        outcomes = await asyncio.gather(*(claim(n) for n in range(4)))
        assert sorted(outcomes) == ["PreconditionFailed"] * 3 + ["won"]


async def test_multipart_commit_honours_if_none_match(s3_server: SeaweedFS, bucket: str) -> None:
    async with s3_server.client(retries={"max_attempts": 1}) as s3:
        await s3.put_object(Bucket=bucket, Key="x.out", Body=b"committed")
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="x.out")
        part = await s3.upload_part(
            Bucket=bucket, Key="x.out", UploadId=upload["UploadId"], PartNumber=1, Body=b"late"
        )
        with pytest.raises(ClientError) as refused:
            await s3.complete_multipart_upload(
                Bucket=bucket,
                Key="x.out",
                UploadId=upload["UploadId"],
                IfNoneMatch="*",
                MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
            )
        assert _error_code(refused.value) == "PreconditionFailed"
        got = await s3.get_object(Bucket=bucket, Key="x.out")
        assert await got["Body"].read() == b"committed"


async def test_bucket_versioning_keeps_old_versions(s3_server: SeaweedFS, bucket: str) -> None:
    async with s3_server.client() as s3:
        await s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        assert (await s3.get_bucket_versioning(Bucket=bucket))["Status"] == "Enabled"
        old = await s3.put_object(Bucket=bucket, Key="v", Body=b"1")
        await s3.put_object(Bucket=bucket, Key="v", Body=b"2")
        got = await s3.get_object(Bucket=bucket, Key="v", VersionId=old["VersionId"])
        assert await got["Body"].read() == b"1"
        versions = await s3.list_object_versions(Bucket=bucket, Prefix="v")
        assert len(versions["Versions"]) == 2


async def test_s3_env_points_a_default_client_at_seaweedfs(
    s3_env: dict[str, str], bucket: str
) -> None:
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_env["AWS_ENDPOINT_URL_S3"]
    async with get_session().create_client("s3") as s3:  # endpoint, keys, region: all from env
        await s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        assert s3.meta.endpoint_url == s3_env["AWS_ENDPOINT_URL_S3"]
        got = await s3.get_object(Bucket=bucket, Key="k")
        assert await got["Body"].read() == b"v"


async def test_seaweedfs_dies_mid_read_and_comes_back(s3_server: SeaweedFS, bucket: str) -> None:
    body = os.urandom(48 * MiB)
    endpoint = s3_server.endpoint_url
    async with s3_server.client(retries={"max_attempts": 1}) as s3:
        await s3.put_object(Bucket=bucket, Key="big", Body=body)
        got = await s3.get_object(Bucket=bucket, Key="big")
        head = b""
        while len(head) < MiB:
            head += await got["Body"].read(MiB - len(head))
        assert head == body[:MiB]
        await s3_server.astop(grace_seconds=0)  # a crash: SIGKILL
        with pytest.raises(aiohttp.ClientError, match="not completed"):
            while await got["Body"].read(MiB):
                pass
        await s3_server.astart()
    assert s3_server.endpoint_url == endpoint
    async with s3_server.client() as s3:
        got = await s3.get_object(Bucket=bucket, Key="big")
        assert await got["Body"].read() == body


# ----------------------------------------------------------------------------- model server


async def test_model_answers_ping_and_execution_parameters(model: ModelServer) -> None:
    async with aiohttp.ClientSession(model.url) as http:
        async with http.get("/ping") as ping:
            assert ping.status == 200
        async with http.get("/execution-parameters") as params:
            assert params.status == 404
        wanted = {
            "MaxConcurrentTransforms": 8,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": 6,
        }
        model.control(execution_parameters=wanted)
        async with http.get("/execution-parameters") as params:
            assert params.status == 200
            assert await params.json() == wanted


async def test_model_echoes_and_logs_headers_as_sent(model: ModelServer) -> None:
    body = b"1,2,3\n4,5,6\n"
    sent = {"Content-Type": "text/csv", "Accept": "application/jsonlines", "X-Custom": "v"}
    async with aiohttp.ClientSession(model.url) as http:
        async with http.post("/invocations", data=body, headers=sent) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "application/jsonlines"
            assert await answer.read() == body
    (entry,) = model.requests()
    headers = dict(entry["headers"])
    assert {name: headers[name] for name in sent} == sent
    assert entry["body_bytes"] == len(body)
    assert entry["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["answer"] == 200
    assert entry["time"] <= entry["done"]


async def test_model_lines_behaviour(model: ModelServer) -> None:
    model.control(behaviour="lines")
    async with aiohttp.ClientSession(model.url) as http:
        async with http.post("/invocations", data=b"ab\nc\n\nxyz") as answer:
            assert await answer.read() == b"2\n1\n0\n3\n"
        async with http.post("/invocations", data=b"") as answer:
            assert await answer.read() == b""


async def test_model_status_faults_then_recovers(model: ModelServer) -> None:
    model.control(fault="status", status=503, fault_count=2)
    statuses = []
    async with aiohttp.ClientSession(model.url) as http:
        for _ in range(3):
            async with http.post("/invocations", data=b"x") as answer:
                statuses.append(answer.status)
        model.control(fault="status", status=500, fault_count=0)
        async with http.post("/invocations", data=b"x") as answer:
            assert answer.status == 500
            assert b"500" in await answer.read()
    assert statuses == [503, 503, 200]
    assert [entry["answer"] for entry in model.requests()] == [503, 503, 200, 500]


@pytest.mark.parametrize("fault", ["reset", "truncated", "malformed"])
async def test_model_broken_answers_fail_the_client(model: ModelServer, fault: str) -> None:
    model.control(fault=fault, fault_count=1)
    async with aiohttp.ClientSession(model.url) as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post("/invocations", data=b"hello world") as answer:
                await answer.read()
        async with http.post("/invocations", data=b"hello world") as answer:
            assert await answer.read() == b"hello world"


async def test_model_delays_and_counts_concurrency(model: ModelServer) -> None:
    model.control(delay_ms=300, random_delay_ms=50)
    async with aiohttp.ClientSession(model.url) as http:

        async def call() -> int:
            async with http.post("/invocations", data=b"x") as answer:
                return answer.status

        assert await asyncio.gather(*(call() for _ in range(4))) == [200] * 4
    log = model.log()
    assert log["max_in_flight"] == 4
    assert sorted(entry["in_flight"] for entry in log["requests"]) == [1, 2, 3, 4]
    # On the server's own clock: each answer waited its delay, and all four were in
    # flight together (every request had arrived before the first answer was done).
    # The server's times are wall-clock, its sleep runs on the event loop's clock, which
    # uvloop reads once per loop turn and times to the millisecond: a 300 ms sleep may end
    # a millisecond early by the wall clock (seen once in CI).
    entries = log["requests"]
    assert all(entry["done"] - entry["time"] >= 0.3 - 0.005 for entry in entries), entries
    assert max(entry["time"] for entry in entries) < min(entry["done"] for entry in entries)


async def test_model_slow_start(model: ModelServer) -> None:
    model.control(ping_fail_seconds=0.4)
    async with aiohttp.ClientSession(model.url) as http:
        async with http.get("/ping") as ping:
            assert ping.status == 503
        await asyncio.sleep(0.5)
        async with http.get("/ping") as ping:
            assert ping.status == 200


async def test_model_exit_after_cuts_the_job(
    model_server_factory: Callable[..., ModelServer],
) -> None:
    server = model_server_factory("--exit-after", "2", "--behaviour", "lines")
    async with aiohttp.ClientSession(server.url) as http:
        for _ in range(2):
            async with http.post("/invocations", data=b"a\n") as answer:
                assert await answer.read() == b"1\n"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.post("/invocations", data=b"a\n") as answer:
                await answer.read()
    for _ in range(100):
        if server.returncode() is not None:
            break
        await asyncio.sleep(0.05)
    assert server.returncode() == 3
    assert "exiting after 2 invocations" in server.log_path.read_text()


def test_control_rejects_unknown_settings(model: ModelServer) -> None:
    with pytest.raises(Exception, match="unknown setting 'colour'"):
        model.control(colour="blue")


# ----------------------------------------------------------------------------- no leftovers


def test_stopped_servers_leave_no_process_or_port(
    seaweedfs_factory: Callable[[], SeaweedFS],
    model_server_factory: Callable[..., ModelServer],
) -> None:
    s3 = seaweedfs_factory()
    model = model_server_factory()
    pids = [s3.pid, model.pid]
    assert all(pid in LIVE for pid in pids)
    assert not ports_free([s3.s3_port, model.port or 0])
    endpoint, first_pid = s3.endpoint_url, s3.pid
    s3.restart(grace_seconds=0)  # a crash and a restart: same ports, a new process
    assert s3.endpoint_url == endpoint and s3.pid != first_pid
    assert not group_alive(first_pid) and first_pid not in LIVE
    pids.append(s3.pid)
    s3.stop()
    model.stop()
    assert not any(group_alive(pid) or process_alive(pid) for pid in pids)
    assert not any(pid in LIVE for pid in pids)
    assert ports_free([s3.s3_port, model.port or 0])


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # inherited by the child too
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "stubborn.log"
    process = ServerProcess(
        "stubborn", [sys.executable, "-c", script], log_path=log, cwd=tmp_path, env={}
    )
    process.launch()
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(log.read_text())
    sent: list[int] = []
    send = process._signal_group

    def record(signum: int) -> None:  # what stop() sends to the group, in order
        sent.append(signum)
        send(signum)

    process._signal_group = record  # type: ignore[method-assign]
    process.stop(grace_seconds=0.3)
    # SIGTERM, ignored for the grace period, then SIGKILL: killed, not waited out (its
    # sleep has a minute to go)
    assert sent[:2] == [signal.SIGTERM, signal.SIGKILL] and set(sent[2:]) <= {signal.SIGKILL}
    assert process.returncode == -9
    assert not group_alive(process.pid)
    assert not process_alive(child)
