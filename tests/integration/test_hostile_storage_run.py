"""Storage under hostile timing, against a real SeaweedFS: stops that meet an S3 call.

A stop (SIGTERM) that meets CreateMultipartUpload leaves no upload open, and neither does
a killed agent's upload of which no record was kept; a stop that meets a commit records
the file with its true size. The moments are made exact by ``HoldingProxy``: a real HTTP
proxy on 127.0.0.1 in front of SeaweedFS that holds the chosen S3 requests until the test
lets them go.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from agent.coordination.commit import UploadRecorder, abort_orphans
from agent.coordination.state import StateLayout
from agent.job import DataUri
from agent.storage import open_stores
from agent.storage.inputs import file_id
from tests.support.holding import HoldingProxy
from tests.support.runjob import (
    STATE_DIRECTORY,
    assembled,
    get_objects,
    line,
    open_uploads,
    output_keys,
    put_objects,
    request_bodies,
    run_agent,
    start_agent,
    transform_job,
)
from tests.support.servers import ModelServer, SeaweedFS, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.twin_free]

MIB = 1 << 20


def _is_create(request: web.Request) -> bool:
    """CreateMultipartUpload: ``POST /bucket/key?uploads``."""
    return request.method == "POST" and "uploads" in request.query


def _is_complete(request: web.Request) -> bool:
    """CompleteMultipartUpload: ``POST /bucket/key?uploadId=…``."""
    return request.method == "POST" and "uploadId" in request.query


def big_csv(rows: int) -> bytes:
    """About 50 bytes a row: 400,000 rows make ~20 MiB, an output of three 8 MiB parts."""
    return b"".join(b"%08d,%s\n" % (n, b"v" * (n % 80)) for n in range(rows))


def echo_output(data: bytes, payload_mb: int) -> bytes:
    """What the echo model's output of a Line-split MultiRecord file must be."""
    records = [line(row + b"\n") for row in data.splitlines()]
    return assembled(request_bodies(records, "MultiRecord", payload_mb * MIB), "Line")


def state_records(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every completion record under ``<prefix>_bt-agent/`` (batches unpacked)."""
    found: list[dict[str, Any]] = []
    answer = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{STATE_DIRECTORY}")
    for item in answer.get("Contents", []):
        if "/done/" not in item["Key"]:
            continue
        document = orjson.loads(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        found += document["Batch"] if "Batch" in document else [document]
    return found


# ----------------------------------------------------------------------------- defect 13c


def test_sigterm_during_the_commit_records_the_true_output_size(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    holding_proxy: Callable[..., HoldingProxy],
    tmp_path: Path,
) -> None:
    data = big_csv(400_000)
    expected = echo_output(data, 6)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big.csv": data})
    proxy = holding_proxy(_is_complete)
    job = transform_job(
        "stop-at-commit",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=6,
        max_concurrent=2,
    )

    agent = start_agent(job, tmp_path, env={"AWS_ENDPOINT_URL_S3": proxy.url})
    try:
        assert wait_until(proxy.arrived.is_set, 60.0), agent.log()  # the commit is under way
        agent.signal(signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in agent.log(), 30.0), agent.log()
        proxy.release.set()  # the commit goes on: the stop met it, so it is finished
        run = agent.wait(60.0)
    finally:
        agent.kill()

    assert run.returncode == 143, run.explain()
    (out,) = output_keys(client, bucket, "out/")
    stored = get_objects(client, bucket, [out])[out]
    assert stored == expected
    etag = client.head_object(Bucket=bucket, Key=out)["ETag"]
    entry = run.file(f"s3://{bucket}/in/big.csv")
    assert entry["Status"] == "Completed", run.explain()
    assert (entry["OutputBytes"], entry.get("OutputETag")) == (len(expected), etag), entry
    assert entry["Records"] == 400_000 and entry["Requests"] >= 4, entry
    (record,) = state_records(client, bucket, "out/")
    assert record["Status"] == "Completed", record
    assert (record["OutputBytes"], record["OutputETag"]) == (len(expected), etag), record
    assert (record["Records"], record["Requests"]) == (entry["Records"], entry["Requests"])
    assert open_uploads(client, bucket) == []


# ----------------------------------------------------------------------------- defect 7


def test_sigterm_during_create_multipart_upload_leaves_no_upload_open(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    holding_proxy: Callable[..., HoldingProxy],
    tmp_path: Path,
) -> None:
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/big.csv": big_csv(400_000)})
    proxy = holding_proxy(_is_create)
    job = transform_job(
        "stop-at-create",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=model.url,
        split_type="Line",
        max_payload_mb=6,
        max_concurrent=2,
    )

    agent = start_agent(job, tmp_path, env={"AWS_ENDPOINT_URL_S3": proxy.url})
    try:
        assert wait_until(proxy.arrived.is_set, 60.0), agent.log()  # CreateMultipartUpload sent
        agent.signal(signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in agent.log(), 30.0), agent.log()
        proxy.release.set()  # S3 makes the upload now, after the stop
        run = agent.wait(60.0)
        assert proxy.forwarded.wait(30.0)
    finally:
        agent.kill()

    assert (run.returncode, run.status) == (143, "Stopped"), run.explain()
    assert run.file(f"s3://{bucket}/in/big.csv")["Status"] == "Stopped"
    assert output_keys(client, bucket, "out/") == []
    assert open_uploads(client, bucket) == [], run.explain()  # the upload S3 made was aborted


@pytest.mark.parametrize("coordination", ["Static", "Lease"])
def test_an_upload_left_open_without_a_record_is_aborted_when_the_file_is_done(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    model: ModelServer,
    tmp_path: Path,
    coordination: str,
) -> None:
    client = s3_server.sync_client()
    rows = b"".join(b"%d,row\n" % n for n in range(100))
    put_objects(client, bucket, {"in/a.csv": rows, "in/b.csv": rows})
    # What an agent killed during CreateMultipartUpload leaves: an open upload with a part,
    # and no record of it anywhere.
    created = client.create_multipart_upload(Bucket=bucket, Key="out/a.csv.out")
    client.upload_part(
        Bucket=bucket, Key="out/a.csv.out", UploadId=created["UploadId"], PartNumber=1, Body=b"x"
    )
    unrelated = client.create_multipart_upload(Bucket=bucket, Key="elsewhere/a.csv.out")
    job = transform_job(
        f"leftover-{coordination}",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        agent={"Coordination": coordination},
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert get_objects(client, bucket, ["out/a.csv.out", "out/b.csv.out"]) == {
        "out/a.csv.out": rows,
        "out/b.csv.out": rows,
    }
    assert open_uploads(client, bucket) == ["elsewhere/a.csv.out"]  # not one of the job's
    assert f"aborted the upload {created['UploadId']}" in run.log, run.log
    client.abort_multipart_upload(
        Bucket=bucket, Key="elsewhere/a.csv.out", UploadId=unrelated["UploadId"]
    )


async def test_an_upload_recorded_before_its_create_call_is_found_by_its_key(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str
) -> None:
    layout = StateLayout(DataUri("s3", bucket, "state/"))
    output = DataUri("s3", bucket, "out/a.out")
    fid = file_id(f"s3://{bucket}/in/a")
    async with open_stores() as stores:
        state = await stores.get(layout.root)
        recorder = UploadRecorder(state, layout, fid, output, holder="dead")
        await recorder.record(None)  # about to call CreateMultipartUpload...
        s3 = await stores.s3_client()
        await s3.create_multipart_upload(Bucket=bucket, Key=output.key)  # ...killed: no id
        other = await s3.create_multipart_upload(Bucket=bucket, Key="out/a.out2")
        assert await abort_orphans(stores, layout, [fid], keep_holder="alive") == 1
        listed = await s3.list_multipart_uploads(Bucket=bucket)
        assert [u["Key"] for u in listed.get("Uploads", [])] == ["out/a.out2"]
        assert await state.list_objects("state/uploads/") == []
        await s3.abort_multipart_upload(Bucket=bucket, Key="out/a.out2", UploadId=other["UploadId"])


# ----------------------------------------------------------------------------- defect 13a, 13b


def test_a_local_job_with_a_244_character_name_and_a_symlink_loop_completes(
    model: ModelServer, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    long_name = "n" * 240 + ".csv"  # its output name, 248 characters, fits in 255
    big = big_csv(60_000)  # ~3 MiB: the output goes through a temporary file on disk
    (inputs / long_name).write_bytes(big)
    (inputs / "sub" / "small.csv").write_bytes(b"1,a\n2,b\n")
    (inputs / "sub" / "loop").symlink_to("loop")
    # What a run killed while writing leaves (here in the earlier temporary-name form).
    leftover = tmp_path / "out" / "sub" / ".small.csv.out.bt-agent-tmp-0123abcd"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    job = transform_job(
        "local-hostile-names",
        str(inputs),
        str(tmp_path / "out"),
        model_url=model.url,
        split_type="Line",
        assemble_with="Line",
        max_payload_mb=1,
    )

    run = run_agent(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert (tmp_path / "out" / f"{long_name}.out").read_bytes() == echo_output(big, 1)
    assert (tmp_path / "out" / "sub" / "small.csv.out").read_bytes() == b"1,a\n2,b\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_bt-agent",
        f"{long_name}.out",
        "sub",
    ]
    assert f"skipping file://{inputs}/sub/loop: a loop of symbolic links" in run.log, run.log
    assert os.listdir(tmp_path / "out" / "sub") == ["small.csv.out"]  # the leftover is gone
