"""DataProcessing end to end: InputFilter → model → JoinSource → OutputFilter over S3.

The expected output is computed here with Python's ``csv`` module, independently of the
agent's CSV code: the model (``lines`` behaviour) answers each filtered row with its
length, the join appends that to the unfiltered row, and ``$[0,-1]`` keeps the ID and the
prediction.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import pytest

from tests.support.runjob import get_objects, put_objects, run_in_process, transform_job
from tests.support.servers import ModelServer, SeaweedFS

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def _dataset(target_bytes: int, seed: int) -> tuple[bytes, bytes]:
    """A CSV of about ``target_bytes`` (some quoted fields) and its expected output."""
    rng = random.Random(seed)
    rows: list[str] = []
    expected: list[str] = []
    size = 0
    n = 0
    while size < target_bytes:
        fields = [f"id-{n}"] + [f"{rng.random():.6f}" for _ in range(18)]
        fields.append(rng.choice(["plain", "with, comma", 'say "hi"', ""]))
        row = _csv_line(fields)
        rows.append(row)
        size += len(row)
        length = len(_csv_line(fields[1:])) - 1  # the model sees the filtered row
        expected.append(_csv_line([fields[0], str(length)]))
        n += 1
    return "".join(rows).encode(), "".join(expected).encode()


def _job(bucket: str, model: ModelServer, **extra: Any) -> dict[str, Any]:
    job = transform_job(
        "dataproc",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out",
        model_url=model.url,
        split_type="Line",
        batch_strategy="MultiRecord",
        assemble_with="Line",
        content_type="text/csv",
        accept="text/csv",
        max_concurrent=4,
        **extra,
    )
    job["DataProcessing"] = {
        "InputFilter": "$[1:]",
        "JoinSource": "Input",
        "OutputFilter": "$[0,-1]",
    }
    return job


def test_filter_join_and_output_filter_over_100_mib_of_csv(
    s3_server: SeaweedFS, s3_env: dict[str, str], bucket: str, model: ModelServer, tmp_path: Path
) -> None:
    data, expected = _dataset(100 * MIB, seed=5)
    small, small_expected = _dataset(10_000, seed=6)
    put_objects(s3_server.sync_client(), bucket, {"in/big.csv": data, "in/sub/small.csv": small})
    model.control(behaviour="lines")

    run = run_in_process(_job(bucket, model), tmp_path)

    assert run.returncode == 0, run.explain()
    keys = ["out/big.csv.out", "out/sub/small.csv.out"]
    outputs = get_objects(s3_server.sync_client(), bucket, keys)
    assert outputs["out/sub/small.csv.out"] == small_expected
    assert outputs["out/big.csv.out"] == expected
    requests = model.requests()
    assert max(entry["body_bytes"] for entry in requests) <= 6 * MIB  # the filtered bound
    assert run.files()[f"s3://{bucket}/in/big.csv"]["Records"] == expected.count(b"\n")
