"""``bt-agent validate`` says whether files are cut into shards (README "Shards of one big
file")."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.validate import overview
from agent.job import parse_job


def job(split_type: str, compression: str, **agent: Any) -> dict[str, Any]:
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
            "SplitType": split_type,
            "CompressionType": compression,
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
        "Agent": agent,
    }


@pytest.mark.parametrize(
    ("split_type", "compression", "agent", "shown"),
    [
        ("Line", "None", {}, "off: each file is one unit of work (ShardSizeMB 0)"),
        (
            "TFRecord",
            "None",
            {"ShardSizeMB": 256},
            "files over 256 MiB are cut into shards of about 256 MiB (ShardSizeMB)",
        ),
        ("Line", "Gzip", {"ShardSizeMB": 256}, "none: CompressionType Gzip: a gzip stream"),
        ("None", "None", {"ShardSizeMB": 256}, "none: SplitType None: a file is one record"),
    ],
)
def test_validate_overview_shows_shards(
    split_type: str, compression: str, agent: dict[str, Any], shown: str
) -> None:
    lines = overview(parse_job(job(split_type, compression, **agent), cwd="/work"), "job.json")
    found = [line.strip() for line in lines if line.strip().startswith("shards")]
    assert len(found) == 1 and shown in found[0], lines
