"""What isolation blames on records and what it does not (README "Failed records"): a 5xx
after its retries, an answer that breaks ``Agent.RequireLinePerRecord``, DataProcessing
with a placeholder joined like an answer. (A refused connection is not blamed on records:
tests/unit/pipeline/test_failed_records.py.) SeaweedFS and ``RecordModel`` on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.record_model import RecordModel, error_lines, token
from tests.support.runjob import (
    Record,
    file_bytes,
    get_objects,
    line,
    output_keys,
    put_objects,
    run_in_process,
    transform_job,
)
from tests.support.servers import SeaweedFS

pytestmark = pytest.mark.integration


def rows(count: int) -> list[Record]:
    return [line(token(n) + b",%d\n" % (n * 31 % 977)) for n in range(count)]


def offset_of(records: list[Record], n: int) -> int:
    return len(file_bytes(records[:n]))


def job_for(bucket: str, url: str, agent: dict[str, Any], **fields: Any) -> dict[str, Any]:
    fields.setdefault("split_type", "Line")
    fields.setdefault("batch_strategy", "MultiRecord")
    fields.setdefault("max_payload_mb", 1)
    fields.setdefault("max_concurrent", 2)
    fields.setdefault("assemble_with", "Line")
    return transform_job(
        "isolation-causes", f"s3://{bucket}/in/", f"s3://{bucket}/out", model_url=url, agent=agent,
        **fields,
    )  # fmt: skip


def outputs(s3_server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = s3_server.sync_client()
    return get_objects(client, bucket, output_keys(client, bucket, "out/"))


def errors_of(found: dict[str, bytes]) -> list[dict[str, Any]]:
    return error_lines(found["out/x.csv.errors.jsonl"])


def test_a_server_error_after_its_retries_is_the_records(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    tmp_path: Path,
) -> None:
    records = rows(3_000)
    put_objects(s3_server.sync_client(), bucket, {"in/x.csv": file_bytes(records)})
    record_model.server_error = frozenset({1_234})
    job = job_for(bucket, record_model.url, {"MaxFailedRecords": 1}, max_retries=1)

    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    found = outputs(s3_server, bucket)
    assert found["out/x.csv.out"] == b"".join(b"%06d\n" % n for n in range(3_000) if n != 1_234)
    [entry] = errors_of(found)
    assert (entry["record"], entry["offset"], entry["status"], entry["attempts"]) == (
        1_234,
        offset_of(records, 1_234),
        500,
        2,
    )
    assert entry["error"] == "crashed on record 1234\n"


def test_a_short_answer_is_cut_down_to_the_record_it_left_out(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    tmp_path: Path,
) -> None:
    records = rows(3_000)
    put_objects(s3_server.sync_client(), bucket, {"in/x.csv": file_bytes(records)})
    record_model.short = frozenset({7, 2_999})
    agent = {"MaxFailedRecords": 5, "RequireLinePerRecord": True, "FailedRecordPlaceholder": "-"}

    run = run_in_process(job_for(bucket, record_model.url, agent), tmp_path)

    assert run.returncode == 0, run.explain()
    found = outputs(s3_server, bucket)
    expected = b"".join(b"-\n" if n in (7, 2_999) else b"%06d\n" % n for n in range(3_000))
    assert found["out/x.csv.out"] == expected
    entries = errors_of(found)
    assert [(e["record"], e["status"]) for e in entries] == [(7, 200), (2_999, 200)]
    assert "the answer has 0 lines for 1 record (Agent.RequireLinePerRecord)" in entries[0]["error"]


def test_with_dataprocessing_the_placeholder_is_joined_like_an_answer(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    record_model: RecordModel,
    tmp_path: Path,
) -> None:
    records = rows(2_000)
    put_objects(s3_server.sync_client(), bucket, {"in/x.csv": file_bytes(records)})
    record_model.set_bad({0, 999})
    job = job_for(
        bucket,
        record_model.url,
        {"MaxFailedRecords": 5, "FailedRecordPlaceholder": "FAILED"},
        content_type="text/csv",
        accept="text/csv",
    )
    job["DataProcessing"] = {"InputFilter": "$[0]", "JoinSource": "Input"}

    run = run_in_process(job, tmp_path)

    assert run.returncode == 0, run.explain()
    found = outputs(s3_server, bucket)
    expected = b"".join(
        record.raw[:-1] + (b",FAILED\n" if n in (0, 999) else b",%06d\n" % n)
        for n, record in enumerate(records)
    )
    assert found["out/x.csv.out"] == expected
    entries = errors_of(found)
    # The record as it was sent (filtered), where it is in the input (unfiltered).
    assert [(e["record"], e["offset"], e["length"], e["record_text"]) for e in entries] == [
        (n, offset_of(records, n), len(records[n].raw), token(n).decode() + "\n") for n in (0, 999)
    ]
