"""Small job documents for the unit tests of one ``Agent`` field family: the least valid
CreateTransformJob with the given ``Agent`` fields, parsed, or its problems."""

from __future__ import annotations

from typing import Any

import pytest

from agent.job import JobError, LoadedJob, parse_job


def agent_job(**agent: Any) -> dict[str, Any]:
    """An S3Prefix job over ``s3://bkt/in/`` with ``agent`` as its ``Agent`` object."""
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}},
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
        "Agent": agent,
    }


def parse(document: dict[str, Any]) -> LoadedJob:
    return parse_job(document, cwd="/work")


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Each problem of an invalid ``document`` as (JSON path, message)."""
    with pytest.raises(JobError) as caught:
        parse(document)
    return [(problem.path, problem.message) for problem in caught.value.problems]
