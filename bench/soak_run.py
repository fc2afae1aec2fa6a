"""The soak's running parts: the environment, each job's instances, and the model's events.

Each instance launch is ``python -m agent --job F --summary S --instance-index i
--instance-count n`` (``tests/support/runjob.py: start_agent``), with a job file of its own
that differs from the others' only in ``Agent.ModelUrl``: every launch starts its own
``Agent.ModelReplicas`` model processes (``bench/soak_model.py``) on ports of its own, so a
relaunch never meets the ports of the models its killed predecessor is still stopping
(README "The model server": a port already taken fails the job). ``ModelUrl`` is not in the
settings hash, so every launch works on the same run (docs/design.md §4.2, §4.7).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.proc import vm_hwm
from bench.soak_data import JobData
from tests.support.processes import HOST, free_port_block, ports_free
from tests.support.runjob import Agent, AgentRun, start_agent, transform_job
from tests.support.seaweedfs import SeaweedFS


@dataclass
class Settings:
    """The knobs of one scale."""

    lease_instances: int
    static_instances: int
    data_scale: float
    lease_ttl: int
    model_delay_ms: float
    shard_mb: int = 1
    replicas: int = 2
    concurrency: int = 2  # MaxConcurrentTransforms: per replica
    max_records: int = 48  # Agent.MaxRecordsPerRequest: many bodies from small files
    timeout_seconds: int = 2
    reorder_mb: int = 16
    extra_faults: int = 0  # drawn on top of one of each kind, per phase
    phase_limit_seconds: float = 300.0


@dataclass
class Env:
    """What every part of one round shares."""

    seaweed: SeaweedFS
    client: Any  # blocking botocore S3 client
    bucket: str
    directory: Path
    seed: int
    settings: Settings
    control: Path = field(init=False)
    events: Path = field(init=False)
    faulted: Path = field(init=False)
    _ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.control = self.directory / "model-control.json"
        self.events = self.directory / "model-events.log"
        self.faulted = self.directory / "faulted"
        self.faulted.mkdir(parents=True, exist_ok=True)
        self.control.write_bytes(b"{}")
        self.events.touch()

    def ports(self, count: int) -> int:
        """A first port of ``count`` free ones, never handed out before in this soak."""
        while True:
            if len(self._ports) < count:
                base = free_port_block(400)
                self._ports = list(range(base + 1, base + 401))
            first, self._ports = self._ports[0], self._ports[count:]
            if ports_free(range(first, first + count)):
                return first


@dataclass
class Launch:
    """One start of one instance."""

    index: int
    agent: Agent
    fate: str = ""  # what the soak did to it: killed, stopped, paused
    peak_rss: int = 0  # VmHWM sampled while it ran
    run: AgentRun | None = None

    def running(self) -> bool:
        popen = self.agent.process.popen
        return popen is not None and popen.poll() is None


class Cluster:
    """The instances of one job."""

    def __init__(self, env: Env, data: JobData, instances: int, coordination: str, name: str):
        self.env, self.data, self.instances = env, data, instances
        self.coordination, self.name = coordination, name
        self.directory = env.directory / data.name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.launches: list[Launch] = []

    def job(self, port: int) -> dict[str, Any]:
        s, d, bucket = self.env.settings, self.data, self.env.bucket
        source = f"s3://{bucket}/{d.prefix}"
        if d.data_type == "ManifestFile":
            source = f"s3://{bucket}/manifests/{d.name}.manifest"
        command = [sys.executable, "-m", "bench.soak_model", "--port", "{port}"]
        command += ["--seed", str(self.env.seed)]
        command += ["--control", str(self.env.control), "--events", str(self.env.events)]
        command += ["--faulted", str(self.env.faulted), "--delay-ms", str(s.model_delay_ms)]
        command += ["--timeout-seconds", str(s.timeout_seconds)]
        agent: dict[str, Any] = {
            "ModelUrl": f"http://{HOST}:{port}",
            "ModelCommand": command,
            "ModelReplicas": s.replicas,
            "ReplicaRestarts": 100,  # resets and kills may take a replica down many times
            "MaxFailedRecords": -1,
            "MaxRecordsPerRequest": s.max_records,
            "ReorderBufferMB": s.reorder_mb,
            "ShardSizeMB": s.shard_mb,
            "Coordination": self.coordination,
        }
        if self.coordination == "Lease":
            agent["LeaseTTLSeconds"] = s.lease_ttl
        if d.placeholder is not None:
            agent["FailedRecordPlaceholder"] = d.placeholder
        job = transform_job(
            self.name,
            source,
            f"s3://{bucket}/{d.out.rstrip('/')}",
            data_type=d.data_type,
            split_type=d.split_type,
            batch_strategy="MultiRecord",
            assemble_with=d.assemble_with,
            max_payload_mb=1,
            max_concurrent=s.concurrency,
            compression=d.compression,
            timeout_seconds=s.timeout_seconds,
            max_retries=3,
            agent=agent,
        )
        job["TransformResources"] = {"InstanceCount": self.instances, "InstanceType": "local"}
        return job

    @property
    def state_prefix(self) -> str:
        return f"{self.data.out}_bt-agent/{self.job(0)['TransformJobName']}/"

    def launch(self, index: int) -> Launch:
        port = self.env.ports(self.env.settings.replicas)
        args = ["--instance-index", str(index), "--instance-count", str(self.instances)]
        env = {
            **self.env.seaweed.env(),
            "AWS_CONFIG_FILE": str(self.env.directory / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.env.directory / "no-aws-config"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        agent = start_agent(self.job(port), self.directory, env=env, args=args)
        launch = Launch(index, agent)
        self.launches.append(launch)
        return launch

    def start(self) -> None:
        for index in range(self.instances):
            self.launch(index)

    def running(self) -> list[Launch]:
        return [launch for launch in self.launches if launch.running()]

    def poll(self) -> None:
        """Sample the peak RSS of the running launches; collect the ended ones."""
        for launch in self.launches:
            if launch.run is not None:
                continue
            if launch.running():
                launch.peak_rss = max(launch.peak_rss, vm_hwm(launch.agent.pid))
            else:
                launch.run = launch.agent.wait(10)

    def finished(self) -> bool:
        self.poll()
        return all(launch.run is not None for launch in self.launches)

    def stop_all(self) -> None:
        for launch in self.launches:
            if launch.run is None:
                launch.agent.kill()
                launch.run = launch.agent.wait(10)

    def logs(self) -> str:
        return "".join(launch.agent.log() for launch in self.launches)


class Events:
    """The model processes' event log (``bench/soak_model.py``), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.outcomes: Counter[str] = Counter()
        self.good = 0  # tokens answered 200
        self._tail = b""

    def read(self) -> None:
        with open(self.path, "rb") as events:
            events.seek(self.offset)
            data = self._tail + events.read()
        self.offset += len(data) - len(self._tail)
        *lines, self._tail = data.split(b"\n")
        for line in lines:
            _, outcome, good = line.split()
            self.outcomes[outcome.decode()] += 1
            self.good += int(good)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


def wait_exit(launch: Launch, timeout: float) -> None:
    """Wait for a launch the soak signalled to end (SIGKILL after ``timeout``)."""
    popen = launch.agent.process.popen
    assert popen is not None
    deadline = time.monotonic() + timeout
    while popen.poll() is None and time.monotonic() < deadline:
        launch.peak_rss = max(launch.peak_rss, vm_hwm(launch.agent.pid))
        time.sleep(0.05)
    launch.run = launch.agent.wait(10)
