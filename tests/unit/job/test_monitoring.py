"""The metrics fields of ``Agent`` (README "Watching a run"): MetricsPort, MetricsAddress,
MetricsPushgatewayUrl, MetricsPushIntervalSeconds, and the flags that override the first two."""

from __future__ import annotations

from typing import Any

import pytest

from agent.job import JobError, with_overrides
from tests.support.jobdocs import agent_job, parse, problems

job = agent_job


def test_metrics_are_off_by_default() -> None:
    agent = parse(job()).settings.agent
    assert agent.metrics_port is None
    assert agent.metrics_address == "0.0.0.0"
    assert agent.metrics_pushgateway_url is None
    assert agent.metrics_push_interval_seconds == 10


def test_every_field_is_read() -> None:
    agent = parse(
        job(
            MetricsPort=9100,
            MetricsAddress="127.0.0.1",
            MetricsPushgatewayUrl="http://pushgateway:9091/",
            MetricsPushIntervalSeconds=3,
        )
    ).settings.agent
    assert (agent.metrics_port, agent.metrics_address) == (9100, "127.0.0.1")
    assert agent.metrics_pushgateway_url == "http://pushgateway:9091"
    assert agent.metrics_push_interval_seconds == 3


@pytest.mark.parametrize("address", ["::", "::1", "10.0.0.7", "localhost", "node-3.cluster"])
def test_addresses_and_host_names_are_taken(address: str) -> None:
    assert parse(job(MetricsAddress=address)).settings.agent.metrics_address == address


@pytest.mark.parametrize(
    ("fields", "path", "says"),
    [
        ({"MetricsPort": 65_536}, "$.Agent.MetricsPort", "65536"),
        ({"MetricsPort": -1}, "$.Agent.MetricsPort", "-1"),
        ({"MetricsPort": "9100"}, "$.Agent.MetricsPort", "integer"),
        ({"MetricsAddress": "a b"}, "$.Agent.MetricsAddress", "neither an IP address"),
        ({"MetricsAddress": ""}, "$.Agent.MetricsAddress", "characters"),
        ({"MetricsPushgatewayUrl": "ftp://gw"}, "$.Agent.MetricsPushgatewayUrl", "http://"),
        (
            {"MetricsPushgatewayUrl": "http://user:secret@gw:9091"},
            "$.Agent.MetricsPushgatewayUrl",
            "credentials",
        ),
        ({"MetricsPushIntervalSeconds": 0}, "$.Agent.MetricsPushIntervalSeconds", "0"),
        ({"MetricsPushIntervalSeconds": 3601}, "$.Agent.MetricsPushIntervalSeconds", "3601"),
    ],
)
def test_a_bad_field_is_named_with_its_path(fields: dict[str, Any], path: str, says: str) -> None:
    found = problems(job(**fields))
    assert [p for p, _ in found] == [path], found
    assert says in found[0][1]
    assert "secret" not in found[0][1]


def test_flags_override_the_file() -> None:
    settings = parse(job(MetricsPort=9100)).settings
    changed = with_overrides(settings, metrics_port=0, metrics_address="127.0.0.1")
    assert (changed.agent.metrics_port, changed.agent.metrics_address) == (0, "127.0.0.1")
    with pytest.raises(JobError) as caught:
        with_overrides(settings, metrics_address="not an address")
    assert [p.path for p in caught.value.problems] == ["--metrics-address"]
