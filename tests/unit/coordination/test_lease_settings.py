"""``Agent.LeaseTTLSeconds``: validation, its default, and the lease timings derived from it."""

from __future__ import annotations

from typing import Any

import pytest

from agent.coordination.lease import LeaseSettings
from agent.job import JobError, parse_job


def job_with_agent(**agent: Any) -> dict[str, Any]:
    return {
        "TransformJobName": "job-1",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}
        },
        "TransformOutput": {"S3OutputPath": "s3://bkt/out/"},
        "Agent": agent,
    }


def test_the_default_ttl_is_60_seconds_and_gives_the_default_timings() -> None:
    settings = parse_job(job_with_agent(), cwd="/work").settings
    assert settings.agent.lease_ttl_seconds == 60
    assert LeaseSettings.for_ttl(settings.agent.lease_ttl_seconds) == LeaseSettings()


@pytest.mark.parametrize("ttl", [2, 3, 45, 86_400])
def test_a_ttl_is_taken_and_scales_every_timing(ttl: int) -> None:
    settings = parse_job(job_with_agent(Coordination="Lease", LeaseTTLSeconds=ttl), cwd="/work")
    assert settings.settings.agent.lease_ttl_seconds == ttl
    lease = LeaseSettings.for_ttl(ttl)
    assert lease.ttl_seconds == ttl
    # The holder renews several times before it must stop, and stops before any takeover.
    assert 0 < lease.renew_seconds * 4 < lease.ttl_seconds - lease.margin_seconds
    assert 0 < lease.poll_seconds < lease.renew_seconds
    assert 0 < lease.request_timeout_seconds <= min(5.0, lease.renew_seconds)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1, "out of range; use an integer from 2 to 86400"),
        (0, "out of range"),
        (86_401, "out of range"),
        (2.5, "expected an integer"),
        ("3", "expected an integer"),
        (True, "expected an integer"),
    ],
)
def test_a_bad_ttl_is_refused_with_its_path(value: object, words: str) -> None:
    with pytest.raises(JobError) as caught:
        parse_job(job_with_agent(LeaseTTLSeconds=value), cwd="/work")
    found = {problem.path: problem.message for problem in caught.value.problems}
    assert list(found) == ["$.Agent.LeaseTTLSeconds"]
    assert words in found["$.Agent.LeaseTTLSeconds"]


def test_the_ttl_does_not_change_the_settings_hash() -> None:
    from agent.job import settings_hash

    short = parse_job(job_with_agent(LeaseTTLSeconds=3), cwd="/work").settings
    default = parse_job(job_with_agent(), cwd="/work").settings
    assert settings_hash(short) == settings_hash(default)  # timing never shapes an .out
