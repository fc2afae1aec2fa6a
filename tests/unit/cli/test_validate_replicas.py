"""``bt-agent validate`` shows the model's replicas (README "Replicas")."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.validate import overview
from agent.job import parse_job
from tests.support.jobdocs import agent_job

job = agent_job


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        ({}, "1 (Agent.ModelReplicas to start more, or list servers in Agent.ModelUrl)"),
        (
            {"ModelUrl": "http://127.0.0.1:9000", "ReplicaDevices": ["0", "1"]},
            "2 started at http://127.0.0.1:9000, http://127.0.0.1:9001; devices 0, 1; up to 3 "
            "restart(s) each; MaxConcurrentTransforms applies to each",
        ),
        (
            {"ModelUrl": ["http://a:1", "http://b:2"], "ReplicaRestarts": 0},
            "2 servers already running at http://a:1, http://b:2; up to 0 restart(s) each; "
            "MaxConcurrentTransforms applies to each",
        ),
    ],
)
def test_validate_overview_shows_replicas(agent: dict[str, Any], shown: str) -> None:
    lines = overview(parse_job(job(**agent), cwd="/work"), "job.json")
    assert any(line.strip().startswith("replicas") and line.endswith(shown) for line in lines)
