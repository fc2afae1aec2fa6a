"""``bt-agent validate`` says what becomes of failed records (Agent.MaxFailedRecords)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.validate import overview
from agent.job import parse_job


def job(**agent: Any) -> dict[str, Any]:
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/", "AssembleWith": "Line"},
        "Agent": agent,
    }


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        ({}, "a failed request fails its file (MaxFailedRecords not set); 413s are cut"),
        (
            {"MaxFailedRecords": 3, "FailedRecordPlaceholder": "ERR"},
            "isolated to <name>.errors.jsonl, at most 3 an instance (MaxFailedRecords 3); "
            "'ERR' in their place in the output",
        ),
        (
            {"MaxFailedRecords": -1},
            "isolated to <name>.errors.jsonl, no limit (MaxFailedRecords -1); nothing in "
            "their place in the output",
        ),
    ],
)
def test_validate_overview_shows_it(agent: dict[str, Any], shown: str) -> None:
    lines = overview(parse_job(job(**agent), cwd="/work"), "job.json")
    assert any(line.strip().startswith("failed records") and line.endswith(shown) for line in lines)
