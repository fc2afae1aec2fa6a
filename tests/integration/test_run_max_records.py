"""``Agent.MaxRecordsPerRequest`` end to end (README, The job file; docs/design.md §2.4).

The model here is a hand-written aiohttp server on 127.0.0.1 that counts the records of
every body it is sent and answers 400 to a body of more records than it takes, as a
model server whose workers run out of memory on large batches would; otherwise it
echoes the body. Each case runs the same job without the field (the model refuses, the
file fails), with it (every body within the cap, exit 0), and uncapped against a model
without a limit: the capped outputs are byte for byte the uncapped ones.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.runjob import (
    file_bytes,
    get_objects,
    local_outputs,
    put_objects,
    run_in_process,
    tfrecord,
    transform_job,
)
from tests.support.servers import SeaweedFS
from tests.support.threaded_model import ThreadedModel

pytestmark = pytest.mark.integration

MIB = 1 << 20


def count_records(framing: str, body: bytes) -> int:
    """How many records a body holds, read the model's way (independently of the agent)."""
    if framing == "Line":
        return body.count(b"\n") + (bool(body) and not body.endswith(b"\n"))
    count = at = 0
    while at < len(body):  # TFRecord: u64 length, u32 CRC, payload, u32 CRC
        at += 16 + struct.unpack_from("<Q", body, at)[0]
        count += 1
    assert at == len(body), "a body ended inside a frame"
    return count


class CountingModel(ThreadedModel):
    """``/invocations``: 400 above ``limit`` records (``None``: no limit), else the body back.

    ``seen`` holds (first byte, records, size, status) per request in arrival order, and
    ``digests`` the SHA-256 of each body. With ``busy_once`` the first attempt of every
    body is answered 503, so each is sent again. Runs its own event loop in a thread.
    """

    max_body_bytes = 256 * MIB

    def __init__(self, framing: str, limit: int | None) -> None:
        super().__init__()
        self.framing = framing
        self.limit = limit
        self.busy_once = False
        self.seen: list[tuple[bytes, int, int, int]] = []
        self.digests: list[str] = []

    def reset(self, limit: int | None) -> None:
        self.limit, self.seen, self.digests = limit, [], []

    async def _invocations(self, request: web.Request) -> web.Response:
        body = await request.read()
        records = count_records(self.framing, body)
        digest = hashlib.sha256(body).hexdigest()
        status = 200
        if self.busy_once and digest not in self.digests:
            status = 503
        elif self.limit is not None and records > self.limit:
            status = 400
        self.seen.append((body[:1], records, len(body), status))
        self.digests.append(digest)
        if status == 503:
            return web.Response(status=503, text="busy\n")
        if status == 400:
            return web.Response(status=400, text=f"{records} records, over {self.limit}\n")
        return web.Response(body=body, content_type="application/octet-stream")

    def counts(self, first: bytes | None = None) -> list[int]:
        """Records of each answered request (of one file: its records start with ``first``)."""
        return [
            records
            for head, records, _, status in self.seen
            if status == 200 and (first is None or head == first)
        ]

    def sizes(self, first: bytes) -> list[int]:
        return sorted(
            size for head, _, size, status in self.seen if status == 200 and head == first
        )


@pytest.fixture
def counting_model() -> Iterator[Any]:
    models: list[CountingModel] = []

    def start(framing: str, limit: int | None) -> CountingModel:
        model = CountingModel(framing, limit)
        models.append(model)
        model.start()
        return model

    try:
        yield start
    finally:
        for model in models:
            model.stop()


def test_line_bodies_are_capped_and_the_outputs_are_those_without_the_cap(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, counting_model: Any, tmp_path: Path
) -> None:
    # a.csv: 30,000 short lines, one uncapped body under 1 MiB; the cap binds. b.csv: lines
    # of 1,501 bytes, bodies of 698 lines: the 1 MiB bound binds before the cap of 1,000.
    short = b"".join(b"a%07d,%d\n" % (i, i % 97) for i in range(30_000))[:-1]  # no final \n
    long = b"".join(b"b%07d," % i + b"v" * 1491 + b"\n" for i in range(2_000))
    put_objects(s3_server.sync_client(), bucket, {"in/a.csv": short, "in/b.csv": long})
    model = counting_model("Line", 1_000)

    def job(output: str, cap: int | None) -> dict[str, Any]:
        return transform_job(
            "max-records",
            f"s3://{bucket}/in/",
            f"s3://{bucket}/{output}",
            model_url=model.url,
            split_type="Line",
            batch_strategy="MultiRecord",
            assemble_with="Line",
            max_payload_mb=1,
            max_concurrent=4,
            agent={} if cap is None else {"MaxRecordsPerRequest": cap},
        )

    refused = run_in_process(job("out-refused", None), tmp_path)
    assert refused.returncode == 1, refused.explain()
    entry = refused.file(f"s3://{bucket}/in/a.csv")
    assert entry["Status"] == "Failed" and "30000 records, over 1000" in entry["FailureReason"]
    assert refused.file(f"s3://{bucket}/in/b.csv")["Status"] == "Completed"

    model.reset(1_000)
    capped = run_in_process(job("out-capped", 1_000), tmp_path)
    assert capped.returncode == 0, capped.explain()
    assert all(status == 200 for *_, status in model.seen)
    assert model.counts(b"a") == [1_000] * 30  # the cap binds: 30 bodies of 1,000 lines
    assert sorted(model.counts(b"b")) == [604, 698, 698]  # 1 MiB holds 698 lines: the bound
    capped_b_sizes = model.sizes(b"b")
    assert capped.file(f"s3://{bucket}/in/a.csv")["Requests"] == 30

    model.reset(None)  # a model that takes any body: the uncapped run's outputs and bodies
    plain = run_in_process(job("out-plain", None), tmp_path)
    assert plain.returncode == 0, plain.explain()
    assert model.counts(b"a") == [30_000]
    assert model.sizes(b"b") == capped_b_sizes  # where the bound binds, the same bodies

    keys = ["a.csv.out", "b.csv.out"]
    client = s3_server.sync_client()
    outputs = get_objects(client, bucket, [f"out-capped/{k}" for k in keys])
    reference = get_objects(client, bucket, [f"out-plain/{k}" for k in keys])
    for key in keys:
        assert outputs[f"out-capped/{key}"] == reference[f"out-plain/{key}"]
    assert outputs["out-capped/a.csv.out"] == short + b"\n"  # the echo model: the input back
    assert outputs["out-capped/b.csv.out"] == long


def test_streamed_tfrecord_bodies_close_at_the_cap_and_retries_reread_them(
    counting_model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # About 10.6 MB: local reads come in 4 MiB chunks, so some bodies of about 1 MB span
    # two chunks and go out as streamed parts; a retry reads those again from the file.
    rng = random.Random(12)
    data = file_bytes([tfrecord(rng.randbytes(rng.randrange(0, 3_000))) for _ in range(7_000)])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.tfrecord").write_bytes(data)
    model = counting_model("TFRecord", 700)

    def job(output: str, cap: int | None) -> dict[str, Any]:
        return transform_job(
            "max-records-streamed",
            str(tmp_path / "in") + "/",
            str(tmp_path / output),
            model_url=model.url,
            split_type="TFRecord",
            batch_strategy="MultiRecord",
            max_payload_mb=0,  # no bound: each body streamed with chunked encoding
            max_concurrent=2,
            agent={} if cap is None else {"MaxRecordsPerRequest": cap},
        )

    refused = run_in_process(job("out-refused", None), tmp_path)
    assert refused.returncode == 1, refused.explain()
    assert model.seen == [(data[:1], 7_000, len(data), 400)]  # the whole file in one body

    model.reset(700)
    model.busy_once = True  # every body's first attempt is answered 503: each is sent again
    caplog.clear()
    capped = run_in_process(job("out-capped", 700), tmp_path)
    assert capped.returncode == 0, capped.explain()
    assert model.counts() == [700] * 10  # the answered attempts, each within the cap
    # Each body was sent twice, byte for byte the same: also those read again from the file.
    assert [status for *_, status in model.seen].count(503) == 10
    assert all(model.digests.count(digest) == 2 for digest in model.digests)
    retried = [r.getMessage() for r in caplog.records if "failed (attempt 1/4)" in r.getMessage()]
    assert any("body from byte" in text and "body from byte 0:" not in text for text in retried)
    model.busy_once = False

    model.reset(None)
    plain = run_in_process(job("out-plain", None), tmp_path)
    assert plain.returncode == 0, plain.explain()
    capped_out = local_outputs(tmp_path / "out-capped")
    assert capped_out == local_outputs(tmp_path / "out-plain")
    assert list(capped_out.values()) == [data]
    assert capped.files()[f"file://{tmp_path}/in/data.tfrecord"]["Requests"] == 10


def test_data_processing_batches_are_capped(counting_model: Any, tmp_path: Path) -> None:
    rows = b"".join(b"id%d,%d,%d\n" % (i, i % 13, i * 7 % 101) for i in range(4_000))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_bytes(rows)
    model = counting_model("Line", 300)

    def job(output: str, cap: int | None) -> dict[str, Any]:
        document = transform_job(
            "max-records-dataproc",
            str(tmp_path / "in") + "/",
            str(tmp_path / output),
            model_url=model.url,
            split_type="Line",
            batch_strategy="MultiRecord",
            assemble_with="Line",
            content_type="text/csv",
            accept="text/csv",
            max_payload_mb=1,
            agent={} if cap is None else {"MaxRecordsPerRequest": cap},
        )
        document["DataProcessing"] = {
            "InputFilter": "$[1:]",
            "JoinSource": "Input",
            "OutputFilter": "$[0,-1]",
        }
        return document

    refused = run_in_process(job("out-refused", None), tmp_path)
    assert refused.returncode == 1, refused.explain()

    model.reset(300)
    capped = run_in_process(job("out-capped", 300), tmp_path)
    assert capped.returncode == 0, capped.explain()
    assert model.counts() == [300] * 13 + [100]

    model.reset(None)
    plain = run_in_process(job("out-plain", None), tmp_path)
    assert plain.returncode == 0, plain.explain()
    assert model.counts() == [4_000]
    capped_out = local_outputs(tmp_path / "out-capped")
    assert capped_out == local_outputs(tmp_path / "out-plain")
    expected = b"".join(b"id%d,%d\n" % (i, i * 7 % 101) for i in range(4_000))
    assert list(capped_out.values()) == [expected]  # the ID joined with the echoed last column
