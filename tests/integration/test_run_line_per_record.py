"""``Agent.RequireLinePerRecord`` end to end, against SeaweedFS and a real model server.

The model (``CountingModel``, an aiohttp server on 127.0.0.1 in a thread of its own) answers
each record of a body with one line, the record's number: every record carries its number
as a token ``<r:NNNNNN>``, so the model finds the records of any body (lines, RecordIO or
TFRecord frames, a SingleRecord payload) without parsing the framing. It can be told to
drop the line of one chosen record: a short answer, as sagemaker-python-sdk#1304 reports.
With the field that answer fails its file, naming the request's records, its bytes and
both counts, and no ``.out`` appears; without it the short answer passes silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.runjob import (
    Record,
    file_bytes,
    get_objects,
    line,
    output_keys,
    put_objects,
    recordio,
    run_in_process,
    tfrecord,
    transform_job,
)
from tests.support.servers import SeaweedFS
from tests.support.threaded_model import ThreadedModel

pytestmark = pytest.mark.integration

MIB = 1 << 20
RECORD_BYTES = 1024  # each Line record: 1024 per MiB, so MultiRecord bodies are exact
_TOKEN = re.compile(rb"<r:(\d{6})>")


class CountingModel(ThreadedModel):
    """``POST /invocations``: one line per record token in the body, the record's number;
    the line of record ``drop`` (when set) is left out. ``GET /ping``: 200."""

    ping_text = "ok\n"

    def __init__(self) -> None:
        super().__init__()
        self.drop: int | None = None
        self.answers = 0

    async def _invocations(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.answers += 1
        drop = b"%06d" % self.drop if self.drop is not None else None
        answer = b"".join(number + b"\n" for number in _TOKEN.findall(body) if number != drop)
        return web.Response(body=answer, content_type="text/plain")


@pytest.fixture
def counting_model() -> Iterator[CountingModel]:
    model = CountingModel()
    model.start()
    try:
        yield model
    finally:
        model.stop()


def token(n: int) -> bytes:
    return b"<r:%06d>" % n


def csv_records(count: int) -> list[Record]:
    """Line records of exactly ``RECORD_BYTES`` bytes each."""
    return [
        line(token(n) + b"," + b"x" * (RECORD_BYTES - len(token(n)) - 2) + b"\n")
        for n in range(count)
    ]


def framed_records(split_type: str, count: int) -> list[Record]:
    frame = recordio if split_type == "RecordIO" else tfrecord
    return [frame(token(n) + b"p" * (500 + n % 97)) for n in range(count)]


def records_of(split_type: str, count: int) -> list[Record]:
    return csv_records(count) if split_type == "Line" else framed_records(split_type, count)


def answers(count: int, *, without: int | None = None) -> bytes:
    """The ``.out`` a model answering every record gives (all but ``without``)."""
    return b"".join(b"%06d\n" % n for n in range(count) if n != without)


def spans(records: Sequence[Record], strategy: str, bound: int) -> list[tuple[int, int, int, int]]:
    """(first record, records, start byte, end byte) of each body, packed greedily."""
    found: list[tuple[int, int, int, int]] = []
    first = start = size = 0
    for index, record in enumerate(records):
        whole = strategy == "SingleRecord" or (bound and size + len(record.raw) > bound)
        if index > first and whole:
            found.append((first, index - first, start, start + size))
            first, start, size = index, start + size, 0
        size += len(record.raw)
    if len(records) > first:
        found.append((first, len(records) - first, start, start + size))
    return found


def reason_for(uri: str, records: Sequence[Record], strategy: str, bound: int, drop: int) -> str:
    first, count, start, end = next(
        span for span in spans(records, strategy, bound) if span[0] <= drop < span[0] + span[1]
    )
    which = f"record {first}" if count == 1 else f"records {first}-{first + count - 1}"
    return (
        f"{uri} {which} (bytes [{start}, {end})): the answer has {count - 1} "
        f"line{'' if count == 2 else 's'} for {count} record{'' if count == 1 else 's'} "
        "(Agent.RequireLinePerRecord)"
    )


JobMaker = Callable[..., dict[str, Any]]


@pytest.fixture
def make_job(bucket: str, counting_model: CountingModel) -> JobMaker:
    def make(*, require: bool | None, **fields: Any) -> dict[str, Any]:
        agent = {} if require is None else {"RequireLinePerRecord": require}
        fields.setdefault("split_type", "Line")
        fields.setdefault("batch_strategy", "MultiRecord")
        fields.setdefault("max_payload_mb", 1)
        fields.setdefault("max_concurrent", 4)
        return transform_job(
            "line-per-record",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/out",
            model_url=counting_model.url,
            assemble_with="Line",
            agent=agent,
            **fields,
        )

    return make


def _outputs(s3_server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = s3_server.sync_client()
    keys = [key for key in output_keys(client, bucket, "out/") if key.endswith(".out")]
    return get_objects(client, bucket, keys)


# ---------------------------------------------------------------------- a short answer


@pytest.mark.parametrize(
    ("strategy", "payload_mb", "drop"),
    [
        ("MultiRecord", 1, 1500),  # the second of three 1 MiB bodies, all in flight at once
        ("MultiRecord", 1, 3071),  # the last body
        ("SingleRecord", 1, 1500),  # one record of 3072 requests, four in flight
        ("MultiRecord", 0, 1500),  # no bound: one body, streamed as it is read
    ],
)
def test_a_short_answer_fails_its_file_naming_the_records(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    counting_model: CountingModel,
    make_job: JobMaker,
    tmp_path: Path,
    strategy: str,
    payload_mb: int,
    drop: int,
) -> None:
    records = csv_records(3072)
    put_objects(
        s3_server.sync_client(),
        bucket,
        {"in/x.csv": file_bytes(records), "in/good.csv": file_bytes(csv_records(100))},
    )
    counting_model.drop = drop
    job = make_job(require=True, batch_strategy=strategy, max_payload_mb=payload_mb)

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    uri = f"s3://{bucket}/in/x.csv"
    entry = run.file(uri)
    assert entry["Status"] == "Failed"
    assert entry["FailureReason"] == reason_for(uri, records, strategy, payload_mb * MIB, drop)
    # No .out for the failed file; the other file is whole.
    assert _outputs(s3_server, bucket) == {"out/good.csv.out": answers(100)}


@pytest.mark.parametrize("require", [None, False])
def test_without_the_field_a_short_answer_passes_silently(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    counting_model: CountingModel,
    make_job: JobMaker,
    tmp_path: Path,
    require: bool | None,
) -> None:
    """SageMaker's behaviour, kept by default: the line is simply missing from the output."""
    put_objects(s3_server.sync_client(), bucket, {"in/x.csv": file_bytes(csv_records(3072))})
    counting_model.drop = 1500

    run = run_in_process(make_job(require=require), tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert _outputs(s3_server, bucket) == {"out/x.csv.out": answers(3072, without=1500)}


def test_the_rule_is_checked_on_the_answer_before_the_join(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    counting_model: CountingModel,
    make_job: JobMaker,
    tmp_path: Path,
) -> None:
    """With JoinSource Input the model's raw answer is checked, and the file fails with this
    rule's reason, before the join would refuse it with its own."""
    records = csv_records(3072)
    put_objects(s3_server.sync_client(), bucket, {"in/x.csv": file_bytes(records)})
    counting_model.drop = 2000
    job = make_job(require=True, content_type="text/csv", accept="text/csv")
    job["DataProcessing"] = {"JoinSource": "Input"}

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (1, "Failed"), run.explain()
    uri = f"s3://{bucket}/in/x.csv"
    assert run.file(uri)["FailureReason"] == reason_for(uri, records, "MultiRecord", MIB, 2000)
    assert _outputs(s3_server, bucket) == {}


# ---------------------------------------------------------------------- a correct model


@pytest.mark.parametrize("strategy", ["SingleRecord", "MultiRecord"])
@pytest.mark.parametrize("split_type", ["Line", "RecordIO", "TFRecord"])
def test_a_correct_model_passes_with_the_field_on(
    s3_server: SeaweedFS,
    s3_env: dict[str, str],
    bucket: str,
    counting_model: CountingModel,
    make_job: JobMaker,
    tmp_path: Path,
    split_type: str,
    strategy: str,
) -> None:
    big, small = records_of(split_type, 2500), records_of(split_type, 3)
    assert file_bytes(big).count(b"<r:") == 2500  # no framing byte looks like a token
    put_objects(
        s3_server.sync_client(),
        bucket,
        {"in/big.bin": file_bytes(big), "in/small.bin": file_bytes(small)},
    )
    job = make_job(require=True, split_type=split_type, batch_strategy=strategy)

    run = run_in_process(job, tmp_path)

    assert (run.returncode, run.status) == (0, "Completed"), run.explain()
    assert _outputs(s3_server, bucket) == {
        "out/big.bin.out": answers(2500),
        "out/small.bin.out": answers(3),
    }
    assert counting_model.answers > 2  # big.bin took more than one request
