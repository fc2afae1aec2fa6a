"""``bt-agent validate`` says whether and where the metrics go (README "Watching a run")."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli.validate import overview
from tests.support.jobdocs import agent_job, parse


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        ({}, "not served (MetricsPort or --metrics-port to serve /metrics)"),
        ({"MetricsPort": 9100}, "/metrics on 0.0.0.0:9100"),
        ({"MetricsPort": 0, "MetricsAddress": "127.0.0.1"}, "/metrics on 127.0.0.1:any free port"),
        (
            {"MetricsPushgatewayUrl": "http://gw:9091", "MetricsPushIntervalSeconds": 5},
            "not served (MetricsPort or --metrics-port to serve /metrics); pushed to "
            "http://gw:9091 every 5 s and at the end",
        ),
    ],
)
def test_validate_overview_shows_the_metrics(agent: dict[str, Any], shown: str) -> None:
    lines = overview(parse(agent_job(**agent)), "job.json")
    (line,) = [line for line in lines if line.strip().startswith("metrics ")]
    assert line.strip() == f"metrics      {shown}"
