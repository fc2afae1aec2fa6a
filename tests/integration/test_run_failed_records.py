"""Failed records and 413s end to end (README "Failed records"), against SeaweedFS and a
real model server (``RecordModel``: 400 to a body holding a bad record, 413 over a size).

Two files of 120,000 records each hold bad records at the first and the last record, two
adjacent ones and one alone. With ``Agent.MaxFailedRecords`` each failing record is cut
out by halving its body and written to ``<name>.errors.jsonl``; line *i* of the ``.out``
still answers record *i* when a placeholder stands in. Over the limit the run fails and
no output appears; without the field a bad record fails its file, as SageMaker does.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.holding import HoldingProxy
from tests.support.multirun import completion_records, enable_versioning, list_keys
from tests.support.record_model import RecordModel, error_lines, token
from tests.support.runjob import (
    Record,
    file_bytes,
    get_objects,
    line,
    output_keys,
    put_objects,
    recordio,
    run_in_process,
    start_agent,
    tfrecord,
    transform_job,
)
from tests.support.servers import SeaweedFS, wait_until

pytestmark = pytest.mark.integration

RECORDS = 120_000
BAD = (0, 40_000, 40_001, 77_777, RECORDS - 1)  # first, two adjacent, one alone, last
PLACEHOLDER = "FAILED"
FILES = ("in/a.csv", "in/b.csv")


def records_of(split_type: str, count: int) -> list[Record]:
    """Records carrying their numbers; frames with a byte that is not UTF-8."""
    if split_type == "Line":
        return [line(token(n) + b",%d\n" % (n * 7919 % 100_003)) for n in range(count)]
    frame = recordio if split_type == "RecordIO" else tfrecord
    return [frame(token(n) + b"\xff" + b"p" * (n % 13)) for n in range(count)]


def expected_out(count: int, bad: Sequence[int], placeholder: str | None) -> bytes:
    """Each good record's answer, in order; the placeholder's line for a bad one."""
    stand_in = b"" if placeholder is None else placeholder.encode() + b"\n"
    skip = set(bad)
    return b"".join(stand_in if n in skip else b"%06d\n" % n for n in range(count))


def expected_errors(
    uri: str, records: Sequence[Record], bad: Sequence[int]
) -> list[dict[str, Any]]:
    offsets = [0]
    for record in records:
        offsets.append(offsets[-1] + len(record.raw))
    entries = []
    for n in sorted(bad):
        entry: dict[str, Any] = {
            "input": uri,
            "record": n,
            "offset": offsets[n],
            "length": len(records[n].raw),
            "status": 400,
            "error": f"cannot read record {n}\n",
            "attempts": 1,
        }
        try:
            entry["record_text"] = records[n].single.decode()
        except UnicodeDecodeError:
            entry["record_base64"] = base64.b64encode(records[n].single).decode()
        entries.append(entry)
    return entries


def outputs(s3_server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = s3_server.sync_client()
    return get_objects(client, bucket, output_keys(client, bucket, "out/"))


JobMaker = Callable[..., dict[str, Any]]


@pytest.fixture
def make_job(bucket: str, record_model: RecordModel) -> JobMaker:
    def make(agent: dict[str, Any], **fields: Any) -> dict[str, Any]:
        fields.setdefault("split_type", "Line")
        fields.setdefault("batch_strategy", "MultiRecord")
        fields.setdefault("max_payload_mb", 1)
        fields.setdefault("max_concurrent", 4)
        fields.setdefault("assemble_with", "Line")
        return transform_job(
            "failed-records",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/out",
            model_url=record_model.url,
            agent=agent,
            **fields,
        )

    return make


def put_files(s3_server: SeaweedFS, bucket: str, records: Sequence[Record]) -> None:
    data = file_bytes(records)
    put_objects(s3_server.sync_client(), bucket, dict.fromkeys(FILES, data))


# ---------------------------------------------------------------------- isolation on


@pytest.mark.parametrize(
    ("split_type", "strategy", "assemble_with", "count"),
    [
        ("Line", "MultiRecord", "Line", RECORDS),
        ("Line", "MultiRecord", "None", RECORDS),
        ("RecordIO", "MultiRecord", "Line", RECORDS),
        ("TFRecord", "MultiRecord", "None", RECORDS),
        # One request a record: fewer records keep the suite quick; the bad ones are the same
        # kinds (first, adjacent, alone, last) among them.
        ("Line", "SingleRecord", "Line", 3_000),
        ("TFRecord", "SingleRecord", "None", 3_000),
    ],
)
def test_bad_records_are_cut_out_and_listed(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
    split_type: str,
    strategy: str,
    assemble_with: str,
    count: int,
) -> None:
    bad = bad_of(count)
    records = records_of(split_type, count)
    put_files(s3_server, bucket, records)
    record_model.set_bad(bad)
    placeholder = PLACEHOLDER if assemble_with == "Line" else None
    agent: dict[str, Any] = {"MaxFailedRecords": 10}
    if placeholder is not None:
        agent["FailedRecordPlaceholder"] = placeholder
    job = make_job(
        agent, split_type=split_type, batch_strategy=strategy, assemble_with=assemble_with
    )

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    found = outputs(s3_server, bucket)
    assert sorted(found) == sorted(
        [f"out/{name[3:]}{suffix}" for name in FILES for suffix in (".out", ".errors.jsonl")]
    )
    for name in FILES:
        uri = f"s3://{bucket}/{name}"
        assert found[f"out/{name[3:]}.out"] == expected_out(count, bad, placeholder)
        errors = [orjson.loads(text) for text in found[f"out/{name[3:]}.errors.jsonl"].splitlines()]
        assert errors == expected_errors(uri, records, bad)
        entry = run.file(uri)
        assert entry["Status"] == "Completed" and entry["FailedRecords"] == len(bad)
    assert run.summary is not None and run.summary["FailedRecords"] == 2 * len(bad)
    if strategy == "MultiRecord":
        # 2·k·log2(n) more requests at most, for k bad records in bodies of n.
        bodies = len(FILES) * -(-len(file_bytes(records)) // (1 << 20))  # of 1 MiB
        bound = 2 * 2 * len(bad) * (count // 2).bit_length() + bodies
        assert record_model.requests <= bound + bodies


# The limit and the default, over each split type and strategy (fewer records a file where
# each is a request of its own).
SHAPES = [
    ("Line", "MultiRecord", "Line", RECORDS),
    ("RecordIO", "MultiRecord", "None", RECORDS),
    ("TFRecord", "SingleRecord", "None", 3_000),
]


def bad_of(count: int) -> tuple[int, ...]:
    return BAD if count == RECORDS else (0, 1_000, 1_001, 2_222, count - 1)


@pytest.mark.parametrize(("split_type", "strategy", "assemble_with", "count"), SHAPES)
def test_over_the_limit_the_run_fails_and_nothing_is_written(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
    split_type: str,
    strategy: str,
    assemble_with: str,
    count: int,
) -> None:
    put_files(s3_server, bucket, records_of(split_type, count))
    record_model.set_bad(bad_of(count))
    job = make_job(
        {"MaxFailedRecords": 3},
        split_type=split_type,
        batch_strategy=strategy,
        assemble_with=assemble_with,
    )

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert outputs(s3_server, bucket) == {}
    assert run.summary is not None
    reason = run.summary["FailureReason"]
    assert "more records failed than Agent.MaxFailedRecords allows (3)" in reason
    assert f"s3://{bucket}/in/" in reason and "record " in reason and "status 400" in reason
    for name in FILES:
        assert run.file(f"s3://{bucket}/{name}")["Status"] == "Failed"


def test_zero_names_the_record_that_broke_the_run(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    records = records_of("Line", 5_000)
    put_objects(s3_server.sync_client(), bucket, {"in/a.csv": file_bytes(records)})
    record_model.set_bad([4_321])
    job = make_job({"MaxFailedRecords": 0})

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    offset = len(file_bytes(records[:4_321]))
    named = f"s3://{bucket}/in/a.csv record 4321 (byte {offset}, status 400)"
    assert run.summary is not None and named in run.summary["FailureReason"]
    assert outputs(s3_server, bucket) == {}


@pytest.mark.parametrize(("split_type", "strategy", "assemble_with", "count"), SHAPES)
def test_without_the_field_a_bad_record_fails_its_file_as_before(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
    split_type: str,
    strategy: str,
    assemble_with: str,
    count: int,
) -> None:
    records = records_of(split_type, count)
    put_files(s3_server, bucket, records)
    record_model.set_bad(bad_of(count))
    job = make_job({}, split_type=split_type, batch_strategy=strategy, assemble_with=assemble_with)

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    assert outputs(s3_server, bucket) == {}
    for name in FILES:
        entry = run.file(f"s3://{bucket}/{name}")
        assert entry["Status"] == "Failed" and "FailedRecords" not in entry
        assert "status 400" in entry["FailureReason"]
    if strategy == "MultiRecord":  # one request a 1 MiB body at most: nothing was cut
        assert record_model.requests <= len(FILES) * -(-len(file_bytes(records)) // (1 << 20))


# ---------------------------------------------------------------------- 413


def test_a_model_that_refuses_bodies_over_300_kib_gets_smaller_ones(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    count = 400_000  # about 7 MiB of lines: two 6 MiB bodies
    records = records_of("Line", count)
    put_objects(s3_server.sync_client(), bucket, {"in/big.csv": file_bytes(records)})
    record_model.refuse_over = 300 << 10
    job = make_job({}, max_payload_mb=6)

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert outputs(s3_server, bucket) == {"out/big.csv.out": expected_out(count, (), None)}
    refused = record_model.refused_sizes
    assert 1 <= len(refused) <= 16, refused  # a handful: the first bodies, halved a few times
    assert record_model.statuses[200] >= len(file_bytes(records)) // (300 << 10)


def test_one_record_over_the_models_limit_fails_its_file_naming_it(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    records = records_of("Line", 2_000)
    big = line(token(1_500) + b"," + b"x" * 5_000 + b"\n")
    records[1_500] = big
    put_objects(s3_server.sync_client(), bucket, {"in/a.csv": file_bytes(records)})
    record_model.refuse_over = 4_096

    run = run_in_process(make_job({}), tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    offset = len(file_bytes(records[:1_500]))
    reason = run.file(f"s3://{bucket}/in/a.csv")["FailureReason"]
    assert f"record 1500 (byte {offset}, {len(big.raw)} bytes sent)" in reason
    assert "413" in reason
    assert outputs(s3_server, bucket) == {}


# ---------------------------------------------------------------------- a stop mid-isolation


def test_a_run_stopped_mid_isolation_and_run_again_gives_the_same_files(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    records = records_of("Line", RECORDS)
    put_files(s3_server, bucket, records)
    record_model.set_bad(BAD)
    record_model.delay_seconds = 0.05
    job = make_job({"MaxFailedRecords": 10, "FailedRecordPlaceholder": PLACEHOLDER})

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    agent = start_agent(job, tmp_path / "first")
    try:
        deadline = time.monotonic() + 60
        while record_model.statuses[400] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record_model.statuses[400] >= 8, agent.log()[-4000:]
        agent.signal(signal.SIGTERM)
        stopped = agent.wait(60)
    finally:
        agent.kill()
    assert stopped.returncode != 0, stopped.explain()
    record_model.delay_seconds = 0.0

    run = run_in_process(job, tmp_path / "second")

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    found = outputs(s3_server, bucket)
    for name in FILES:
        uri = f"s3://{bucket}/{name}"
        assert found[f"out/{name[3:]}.out"] == expected_out(RECORDS, BAD, PLACEHOLDER)
        errors = [orjson.loads(text) for text in found[f"out/{name[3:]}.errors.jsonl"].splitlines()]
        assert errors == expected_errors(uri, records, BAD)


# ---------------------------------------------------------------------- exactly once


def _state_keys(s3_server: SeaweedFS, bucket: str, part: str) -> list[str]:
    client = s3_server.sync_client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/"):
        keys += [item["Key"] for item in page.get("Contents", []) if f"/{part}/" in item["Key"]]
    return keys


def job_summary(s3_server: SeaweedFS, bucket: str) -> dict[str, Any]:
    """The job's ``summary.json`` under its state prefix (every instance's files)."""
    client = s3_server.sync_client()
    key = "out/_bt-agent/failed-records/summary.json"
    summary: dict[str, Any] = orjson.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return summary


def test_a_rerun_keeps_the_files_and_their_errors_files(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    put_files(s3_server, bucket, records_of("Line", 20_000))
    record_model.set_bad([5, 6, 19_999])
    job = make_job({"MaxFailedRecords": -1, "FailedRecordPlaceholder": PLACEHOLDER})
    first = run_in_process(job, tmp_path)
    assert first.returncode == 0, first.explain()
    before = outputs(s3_server, bucket)
    record_model.reset_counts()

    again = run_in_process(job, tmp_path)

    assert (again.returncode, record_model.requests) == (0, 0), again.explain()
    assert outputs(s3_server, bucket) == before
    assert job_summary(s3_server, bucket)["FailedRecords"] == 6


def test_a_lost_completion_record_is_rebuilt_from_both_files(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    """An instance that died between its commits and its records: the next run finds the
    ``.out`` and the errors file with the same input and settings, and records both."""
    put_files(s3_server, bucket, records_of("Line", 20_000))
    record_model.set_bad([5, 6, 19_999])
    job = make_job({"MaxFailedRecords": 10})
    first = run_in_process(job, tmp_path)
    assert first.returncode == 0, first.explain()
    before = outputs(s3_server, bucket)
    client = s3_server.sync_client()
    for key in _state_keys(s3_server, bucket, "done") + [
        key for key in _state_keys(s3_server, bucket, "_bt-agent") if key.endswith("summary.json")
    ]:
        client.delete_object(Bucket=bucket, Key=key)
    record_model.reset_counts()

    again = run_in_process(job, tmp_path)

    assert (again.returncode, record_model.requests) == (0, 0), again.explain()
    assert outputs(s3_server, bucket) == before
    summary = job_summary(s3_server, bucket)
    assert (summary["TransformJobStatus"], summary["FailedRecords"]) == ("Completed", 6)
    entries = {entry["Input"]: entry for entry in summary["Files"]}
    for name in FILES:
        entry = entries[f"s3://{bucket}/{name}"]
        assert (entry["Status"], entry["FailedRecords"], "ErrorsETag" in entry) == (
            "Completed",
            3,
            True,
        )


@pytest.mark.parametrize("bad", [(), (7,)])
def test_an_errors_file_from_another_input_is_replaced_or_deleted(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
    bad: tuple[int, ...],
) -> None:
    records = records_of("Line", 1_000)
    client = s3_server.sync_client()
    put_objects(client, bucket, {"in/a.csv": file_bytes(records)})
    put_objects(client, bucket, {"out/a.csv.errors.jsonl": b'{"stale": true}\n'})
    record_model.set_bad(bad)

    run = run_in_process(make_job({"MaxFailedRecords": 10}), tmp_path)

    assert run.returncode == 0, run.explain()
    found = outputs(s3_server, bucket)
    assert found["out/a.csv.out"] == expected_out(1_000, bad, None)
    if bad:
        errors = error_lines(found["out/a.csv.errors.jsonl"])
        assert errors == expected_errors(f"s3://{bucket}/in/a.csv", records, bad)
    else:
        assert "out/a.csv.errors.jsonl" not in found


@pytest.mark.twin_free  # coordination of commits: no twin decides it
@pytest.mark.parametrize("left", ["the same records", "other bytes of the same size"])
def test_an_errors_file_left_without_its_out_is_kept_if_the_redo_writes_the_same(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    left: str,
) -> None:
    """An instance that stopped between its two commits (docs/design.md §4.5) left the
    errors file and no ``.out``. The redo keeps an errors file holding exactly what it
    wrote, so the object keeps one version; one with other bytes is replaced."""
    client = s3_server.sync_client()
    records = records_of("Line", 2_000)
    put_objects(client, bucket, {"in/a.csv": file_bytes(records)})
    record_model.set_bad([5, 6, 1_999])
    job = make_job({"MaxFailedRecords": 10})
    first = run_in_process(job, tmp_path)
    assert first.returncode == 0, first.explain()
    key = "out/a.csv.errors.jsonl"
    made = client.get_object(Bucket=bucket, Key=key)
    body, metadata = made["Body"].read(), made["Metadata"]
    for name in list_keys(client, bucket, "out/"):
        client.delete_object(Bucket=bucket, Key=name)
    enable_versioning(client, bucket)
    planted = body if left == "the same records" else body.replace(b'"record":5,', b'"record":4,')
    assert len(planted) == len(body)
    put = client.put_object(Bucket=bucket, Key=key, Body=planted, Metadata=metadata)
    record_model.reset_counts()

    again = run_in_process(job, tmp_path)

    assert again.returncode == 0, again.explain()
    found = outputs(s3_server, bucket)
    assert found["out/a.csv.out"] == expected_out(2_000, [5, 6, 1_999], None)
    assert found[key] == body
    versions = [
        version
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
        for version in page.get("Versions", [])
    ]
    if left == "the same records":
        assert [v["ETag"] for v in versions] == [put["ETag"]]
        assert any("kept s3://" in message for message in caplog.messages)
    else:
        assert len(versions) == 2
    (record,) = completion_records(client, bucket, job)
    assert (record["FailedRecords"], record["ErrorsETag"]) == (3, versions[0]["ETag"])


@pytest.mark.twin_free  # coordination of commits: no twin decides it
def test_an_errors_file_kept_by_the_instance_that_took_the_file_over_stays(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    holding_proxy: Callable[..., HoldingProxy],
    tmp_path: Path,
) -> None:
    """Instance A commits the errors file and is paused before its ``.out`` commit reaches
    S3 (held by a proxy), past its lease's TTL. B takes the file over, finds A's errors
    file with the same bytes and keeps it (one version), commits the ``.out`` and records
    both. When A goes on, its ``.out`` commit is refused; B's record names the errors file,
    so A leaves it (found by the soak: A deleted it, and B's record named a missing file)."""
    client = s3_server.sync_client()
    enable_versioning(client, bucket)
    records = records_of("Line", 2_000)
    put_objects(client, bucket, {"in/a.csv": file_bytes(records)})
    bad = (5, 6, 1_999)
    record_model.set_bad(bad)
    job = make_job({"MaxFailedRecords": 10, "Coordination": "Lease", "LeaseTTLSeconds": 3})
    out_key, errors_key = "out/a.csv.out", "out/a.csv.errors.jsonl"
    proxy = holding_proxy(
        lambda request: request.method == "PUT" and request.path.endswith(out_key)
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    a = start_agent(job, tmp_path / "a", env={"AWS_ENDPOINT_URL_S3": proxy.url})
    b = None
    try:
        assert wait_until(proxy.arrived.is_set, 60.0), a.log()  # the errors file is in
        a.signal(signal.SIGSTOP)
        b = start_agent(job, tmp_path / "b")
        second = b.wait(60)
        proxy.release.set()
        a.signal(signal.SIGCONT)
        first = a.wait(60)
    finally:
        a.kill()
        if b is not None:
            b.kill()

    assert (first.returncode, second.returncode) == (0, 0), first.explain() + second.explain()
    found = outputs(s3_server, bucket)
    assert found[out_key] == expected_out(2_000, bad, None)
    assert error_lines(found[errors_key]) == expected_errors(
        f"s3://{bucket}/in/a.csv", records, bad
    )
    versions = client.list_object_versions(Bucket=bucket, Prefix="out/a.csv")
    assert sorted(v["Key"] for v in versions.get("Versions", [])) == [errors_key, out_key]
    assert versions.get("DeleteMarkers", []) == []
    (record,) = completion_records(client, bucket, job)
    etag = client.head_object(Bucket=bucket, Key=errors_key)["ETag"]
    assert (record["FailedRecords"], record["ErrorsETag"]) == (3, etag)
    assert "kept s3://" in second.log, second.log
    assert "stays: the instance that committed" in first.log, first.log


@pytest.mark.twin_free  # coordination of commits: no twin decides it
def test_instances_sharing_files_under_leases_commit_each_errors_file_once(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    """Three instances claim six files under leases (docs/design.md §4.4): each file's
    ``.out`` and errors file are written by one of them, and recorded once."""
    client = s3_server.sync_client()
    enable_versioning(client, bucket)
    records = records_of("Line", 20_000)
    names = [f"in/part-{n}.csv" for n in range(6)]
    put_objects(client, bucket, dict.fromkeys(names, file_bytes(records)))
    bad = (0, 9_999, 10_000, 19_999)
    record_model.set_bad(bad)
    record_model.delay_seconds = 0.01
    job = make_job(
        {"MaxFailedRecords": -1, "FailedRecordPlaceholder": PLACEHOLDER, "Coordination": "Lease"},
        max_payload_mb=1,
    )
    agents = []
    for n in range(3):
        (tmp_path / f"agent-{n}").mkdir()
        agents.append(start_agent(job, tmp_path / f"agent-{n}"))
    try:
        runs = [agent.wait(120) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [run.returncode for run in runs] == [0, 0, 0], [run.explain() for run in runs]

    found = outputs(s3_server, bucket)
    assert sorted(found) == sorted(
        f"out/{name[3:]}{suffix}" for name in names for suffix in (".out", ".errors.jsonl")
    )
    for name in names:
        uri = f"s3://{bucket}/{name}"
        assert found[f"out/{name[3:]}.out"] == expected_out(20_000, bad, PLACEHOLDER)
        errors = [orjson.loads(text) for text in found[f"out/{name[3:]}.errors.jsonl"].splitlines()]
        assert errors == expected_errors(uri, records, bad)
    recorded = completion_records(client, bucket, job)
    assert sorted(record["Input"] for record in recorded) == sorted(
        f"s3://{bucket}/{name}" for name in names
    )
    assert all(record["FailedRecords"] == len(bad) and record["ErrorsETag"] for record in recorded)
    assert job_summary(s3_server, bucket)["FailedRecords"] == 6 * len(bad)
