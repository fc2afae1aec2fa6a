"""The serving fields of ``Agent`` (README "Replicas"): ModelUrl as one URL or a list,
ModelReplicas, ReplicaDevices, ReplicaRestarts, ModelDir, ContainerRuntime."""

from __future__ import annotations

from typing import Any

import pytest

from agent.job.types import replica_url
from tests.support.jobdocs import agent_job, parse, problems

job = agent_job


def test_defaults_are_one_replica_on_model_url() -> None:
    agent = parse(job()).settings.agent
    assert (agent.model_replicas, agent.replica_restarts, agent.replica_devices) == (1, 3, None)
    assert agent.replica_urls == ("http://127.0.0.1:8080",)
    assert agent.model_servers == ()


def test_replicas_listen_on_consecutive_ports() -> None:
    agent = parse(job(ModelUrl="http://127.0.0.1:9000/", ModelReplicas=3)).settings.agent
    assert agent.replica_urls == tuple(f"http://127.0.0.1:{9000 + i}" for i in range(3))


def test_a_list_of_servers_is_one_replica_each() -> None:
    urls = ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "https://m3.example:443/x"]
    agent = parse(job(ModelUrl=urls)).settings.agent
    assert agent.replica_urls == tuple(urls) and agent.model_replicas == 3
    assert agent.model_url == urls[0]


@pytest.mark.parametrize(
    ("agent", "path", "words"),
    [
        ({"ModelReplicas": 0}, "$.Agent.ModelReplicas", ""),
        ({"ModelReplicas": 65}, "$.Agent.ModelReplicas", ""),
        ({"ReplicaRestarts": -1}, "$.Agent.ReplicaRestarts", ""),
        ({"ModelUrl": []}, "$.Agent.ModelUrl", "empty list"),
        ({"ModelUrl": ["http://a:1", 3]}, "$.Agent.ModelUrl[1]", ""),
        ({"ModelUrl": ["http://a:1", "ftp://b"]}, "$.Agent.ModelUrl[1]", "http://"),
        ({"ModelUrl": ["http://a:1", "http://a:1"]}, "$.Agent.ModelUrl[1]", "repeats"),
        (
            {"ModelUrl": ["http://a:1", "http://b:1"], "ModelReplicas": 3},
            "$.Agent.ModelReplicas",
            "lists 2 servers",
        ),
        (
            {"ModelUrl": ["http://a:1", "http://b:1"], "ModelCommand": ["serve"]},
            "$.Agent.ModelUrl",
            "already running",
        ),
        ({"ModelReplicas": 2, "ReplicaDevices": ["0"]}, "$.Agent.ReplicaDevices", "1 device"),
        ({"ReplicaDevices": "0"}, "$.Agent.ReplicaDevices", "non-empty list"),
        ({"ReplicaDevices": ["0 1"]}, "$.Agent.ReplicaDevices[0]", "not a device id"),
        ({"ContainerRuntime": "lxc"}, "$.Agent.ContainerRuntime", ""),
    ],
)
def test_refused(agent: dict[str, Any], path: str, words: str) -> None:
    found = problems(job(**agent))
    assert any(p == path and words in m for p, m in found), found


def test_without_model_replicas_there_is_one_replica_a_device() -> None:
    agent = parse(job(ReplicaDevices=["0", "1", "2", "3"])).settings.agent
    assert agent.model_replicas == 4 and len(agent.replica_urls) == 4


def test_devices_one_a_replica() -> None:
    agent = parse(job(ModelReplicas=2, ReplicaDevices=["0", 1])).settings.agent
    assert agent.replica_devices == ("0", "1")
    agent = parse(job(ModelReplicas=1, ReplicaDevices=["GPU-1a2b,MIG-3"])).settings.agent
    assert agent.replica_devices == ("GPU-1a2b,MIG-3",)


def test_replica_url_keeps_scheme_path_and_ipv6() -> None:
    assert replica_url("http://[::1]:8080/m", 2) == "http://[::1]:8082/m"
    assert replica_url("https://host/m", 1) == "https://host:444/m"
