"""``bt-agent validate`` shows ``Agent.RequireLinePerRecord`` in its overview."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.validate import overview
from agent.job import parse_job


def job(require: bool) -> dict[str, Any]:
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/", "AssembleWith": "Line"},
        "Agent": {"RequireLinePerRecord": require},
    }


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "one line per record required (RequireLinePerRecord)"),
        (False, "not checked (RequireLinePerRecord false)"),
    ],
)
def test_validate_overview_shows_it(value: bool, shown: str) -> None:
    lines = overview(parse_job(job(value), cwd="/work"), "job.json")
    assert any(line.split()[0] == "answers" and line.endswith(shown) for line in lines[1:]), lines
