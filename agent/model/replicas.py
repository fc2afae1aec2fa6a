"""Model replicas (README "Replicas"): ``Agent.ModelReplicas`` processes (or the servers
``Agent.ModelUrl`` lists), each request sent to the one with the fewest in flight.

Replica *i* listens on ``Agent.ModelUrl``'s port + *i* (``SAGEMAKER_BIND_TO_PORT``, which
SageMaker containers honour) and gets ``Agent.ReplicaDevices[i]`` as
``CUDA_VISIBLE_DEVICES``; ``Agent.ModelCommand`` may name them with ``{port}``,
``{replica}``, ``{device}`` and ``{model_dir}``. Each replica has its own ``ModelClient``,
so ``MaxConcurrentTransforms`` bounds the requests in flight to each, as SageMaker bounds
them per container.

With more than one replica, a replica that stops answering (connection refused or reset,
its command exited) is marked down: the request goes to another replica at once, not
counted against ``InvocationsMaxRetries``. A replica the agent started is restarted (with
backoff, at most ``Agent.ReplicaRestarts`` times) and rejoins once its ``/ping`` answers;
a listed server rejoins once its ``/ping`` answers again (each wait, up to
``ModelStartupTimeoutSeconds``, uses one of those tries too). The run fails only when no
replica is left. With one replica nothing changes from a plain model: a command that
exits fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

from agent.backoff import backoff_seconds
from agent.job import JobSettings
from agent.model.client import ModelClient, ModelClientSettings, ModelError, ModelExitedError
from agent.model.container import (
    ContainerError,
    container_environment,
    container_name,
    find_runtime,
    loggable_argv,
    run_argv,
    stop_container,
)
from agent.model.environment import model_environment
from agent.model.policy import ReplicaUnreachable
from agent.model.process import ModelCommandError, ModelProcess, ensure_port_free
from agent.model.wire import RequestBody

log = logging.getLogger("agent.invoke")

LATENCY_SAMPLES = 4096  # latencies kept per replica for the p99 (a uniform sample)
RESTART_BASE_SECONDS = 1.0
RESTART_CAP_SECONDS = 30.0
CONTAINER_STOP_SECONDS = 30.0  # for the engine to remove a container by name
CONTAINER = "<container>"  # stands for the engine's argv in a replica's command


class NoReplicaLeft(ModelError):
    """Every replica is down for good: the run cannot go on."""


def command_for(
    argv: Sequence[str], *, port: int, replica: int, device: str, model_dir: str
) -> list[str]:
    """``Agent.ModelCommand`` with its placeholders filled in (only these four; any other
    brace is left as it is)."""
    values = {
        "{port}": str(port),
        "{replica}": str(replica),
        "{device}": device,
        "{model_dir}": model_dir,
    }
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


@dataclass
class ReplicaStats:
    """What one replica did: for the summary."""

    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0  # summed over its answered requests
    restarts: int = 0
    downs: int = 0
    seen: int = 0  # latencies offered to the sample
    sample: array[float] = field(default_factory=lambda: array("d"))

    def add(self, seconds: float, sent: int, received: int) -> None:
        self.requests += 1
        self.bytes_sent += sent
        self.bytes_received += received
        self.seconds += seconds
        self.seen += 1
        if len(self.sample) < LATENCY_SAMPLES:
            self.sample.append(seconds)
        else:  # reservoir: every latency has the same chance to be kept
            slot = random.randrange(self.seen)
            if slot < LATENCY_SAMPLES:
                self.sample[slot] = seconds

    def p99(self) -> float:
        if not self.sample:
            return 0.0
        ordered = sorted(self.sample)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class Replica:
    """One model server: where it listens, its process (if the agent started it), its client."""

    def __init__(
        self, index: int, url: str, device: str | None, command: Sequence[str] | None
    ) -> None:
        self.index = index
        self.url = url
        self.device = device
        self.argv = command  # what starts it (a template); None: a server already running
        self.container: str | None = None  # its container's name, when it runs in one
        self.process: ModelProcess | None = None
        self.client: ModelClient | None = None
        self.in_flight = 0
        self.up = asyncio.Event()
        self.gone = False  # down for good: restarts used up
        self.restarts_left = 0
        self.stats = ReplicaStats()
        self.recovery: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def as_json(self) -> dict[str, object]:
        s = self.stats
        mean = s.seconds / s.requests if s.requests else 0.0
        entry: dict[str, object] = {
            "Replica": self.index,
            "Url": self.url,
            "Requests": s.requests,
            "BytesSent": s.bytes_sent,
            "BytesReceived": s.bytes_received,
            "MeanMs": round(1000 * mean, 3),
            "P99Ms": round(1000 * s.p99(), 3),
            "Restarts": s.restarts,
        }
        if self.device is not None:
            entry["Device"] = self.device
        if self.gone:
            entry["Down"] = True
        return entry


class ReplicaSet:
    """The replicas of one run: ``async with`` starts the commands (if any) and stops them;
    ``open(settings)`` makes their clients; ``invoke`` dispatches one request."""

    def __init__(
        self,
        job: JobSettings,
        *,
        model_dir: str = "",
        model_environment: Mapping[str, str] | None = None,
        image: str | None = None,
        grace_seconds: float = 10.0,
    ) -> None:
        agent = job.agent
        urls = agent.replica_urls
        devices = agent.replica_devices
        # The model file's image, run in a container, when no ModelCommand says otherwise
        # and ModelUrl lists no running servers.
        self.image = image if agent.model_command is None and not agent.model_servers else None
        command = agent.model_command
        if self.image is not None:
            command = (CONTAINER,)  # a marker: _start_process builds the engine's argv
        self.runtime: str | None = None  # the container engine, found on entering
        self.job = job
        self.model_dir = model_dir  # {model_dir}; set before entering, once artifacts are in
        self.defined_environment = dict(model_environment or {})  # the model file's
        self.grace_seconds = grace_seconds
        self.replicas = [
            Replica(i, url, None if devices is None else devices[i], command)
            for i, url in enumerate(urls)
        ]
        for replica in self.replicas:
            replica.restarts_left = agent.replica_restarts
        self.many = len(self.replicas) > 1
        self.settings: ModelClientSettings | None = None
        self._turn = 0  # ties go in turn
        self._changed = asyncio.Event()  # set (and replaced) when a replica comes or goes
        self._stack = contextlib.AsyncExitStack()
        self._closing = False
        # Replicas whose start failed while others started (``wait_ready``): restarted
        # once the run begins (``open``).
        self._failed_start: dict[int, ModelError] = {}

    # ------------------------------------------------------------------ life cycle

    async def check_ports(self) -> None:
        """Before starting anything: each port a command will listen on must be free."""
        for replica in self.replicas:
            if replica.argv is not None:
                await ensure_port_free(replica.url)

    async def __aenter__(self) -> ReplicaSet:
        try:
            if self.image is not None:
                try:
                    self.runtime = find_runtime(self.job.agent.container_runtime)
                except ContainerError as error:
                    raise ModelCommandError(str(error)) from error
            for replica in self.replicas:
                if replica.argv is not None:
                    replica.process = await self._start_process(replica)
                    log.info("replica %d listens on %s", replica.index, replica.url)
        except BaseException:
            await self._stop_processes()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        for replica in self.replicas:
            if replica.recovery is not None:
                replica.recovery.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await replica.recovery
        await self._stack.aclose()
        await self._stop_processes()

    async def _start_process(self, replica: Replica) -> ModelProcess:
        assert replica.argv is not None
        if self.image is not None:
            return await self._start_container(replica)
        argv = command_for(
            replica.argv,
            port=replica.port,
            replica=replica.index,
            device=replica.device or "",
            model_dir=self.model_dir,
        )
        env = model_environment(self.job, defined=self.defined_environment)
        env["SAGEMAKER_BIND_TO_PORT"] = str(replica.port)
        if replica.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = replica.device
        process = ModelProcess(argv, env=env, grace_seconds=self.grace_seconds)
        await process.start()
        return process

    async def _start_container(self, replica: Replica) -> ModelProcess:
        """``<engine> run … <image> serve`` for ``replica``; the engine's client runs with
        the agent's own environment (its credentials for a registry included), the model
        gets only its ``-e`` variables."""
        assert self.runtime is not None and self.image is not None
        # Mounted as /opt/ml/model: empty when the model file names no artifacts.
        os.makedirs(self.model_dir, exist_ok=True)
        replica.container = container_name(self.job.transform_job_name, replica.index)
        environment = container_environment(self.job, self.defined_environment, port=replica.port)
        try:
            argv = run_argv(
                self.runtime,
                replica.container,
                self.image,
                self.model_dir,
                environment,
                device=replica.device,
            )
        except ContainerError as error:
            raise ModelCommandError(str(error)) from error
        log.info("replica %d runs %s", replica.index, loggable_argv(argv))
        process = ModelProcess(argv, grace_seconds=self.grace_seconds)
        await process.start()
        return process

    async def _stop_replica(self, replica: Replica) -> None:
        """Stop a started replica: its container by name first (an engine's client that
        ends leaves the container running), then the process."""
        if replica.container is not None and self.runtime is not None:
            await asyncio.shield(
                stop_container(self.runtime, replica.container, CONTAINER_STOP_SECONDS)
            )
        if replica.process is not None:
            await replica.process.stop()

    async def _stop_processes(self) -> None:
        for replica in self.replicas:
            await self._stop_replica(replica)

    async def wait_ready(self, timeout_seconds: float) -> None:
        """Every replica's ``/ping`` answers 200 (each waited for at once).

        With more than one replica, one whose start fails (its command exited, or no 200
        in time) while another started is left down: ``open`` starts bringing it back,
        as it would a replica that stopped answering later. Only when every replica
        failed does the start fail, with the first one's error."""
        settings = ModelClientSettings.from_job(self.job)

        async def one(replica: Replica) -> None:
            died = None if replica.process is None else replica.process.died
            async with ModelClient(replica.url, settings, died=died) as probe:
                await probe.wait_ready(timeout_seconds)

        if not self.many:
            await one(self.replicas[0])
            return
        results = await asyncio.gather(
            *(one(replica) for replica in self.replicas), return_exceptions=True
        )
        failed: dict[int, ModelError] = {}
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, ModelError):
                failed[replica.index] = result
            elif isinstance(result, BaseException):
                raise result
        if len(failed) == len(self.replicas):
            raise failed[0]
        self._failed_start = failed

    async def execution_parameters(self) -> dict[str, object] | None:
        """``GET /execution-parameters`` of the first replica that started."""
        first = next(r for r in self.replicas if r.index not in self._failed_start)
        died = None if first.process is None else first.process.died
        settings = ModelClientSettings.from_job(self.job)
        async with ModelClient(first.url, settings, died=died) as probe:
            return await probe.execution_parameters()

    async def open(self, job: JobSettings) -> ReplicaSet:
        """Make each replica's client for the resolved job; every replica is up."""
        self.job = job
        self.settings = ModelClientSettings.from_job(job, fail_fast=self.many)
        for replica in self.replicas:
            failed = self._failed_start.get(replica.index)
            if failed is not None:  # down from the start: brought back as any other
                replica.stats.downs += 1
                log.warning("replica %d (%s) did not start: %s", replica.index, replica.url, failed)
                replica.recovery = asyncio.create_task(self._recover(replica))
                continue
            replica.client = await self._client(replica)
            replica.up.set()
            if replica.argv is None and self.many:
                log.info("replica %d is the server at %s", replica.index, replica.url)
        return self

    async def _client(self, replica: Replica) -> ModelClient:
        assert self.settings is not None
        died = None if replica.process is None else replica.process.died
        client = ModelClient(replica.url, self.settings, died=died)
        await client.__aenter__()
        self._stack.push_async_callback(client.__aexit__, None, None, None)
        return client

    # ------------------------------------------------------------------ dispatch

    async def invoke(self, body: RequestBody, *, what: str) -> bytearray:
        """The answer to ``body`` from the least loaded replica that is up."""
        loop = asyncio.get_running_loop()
        while True:
            replica = await self._pick()
            assert replica.client is not None
            replica.in_flight += 1
            began = loop.time()
            try:
                answer = await replica.client.invoke(body, what=what)
            except (ModelExitedError, ReplicaUnreachable) as error:
                if not self.many or self._closing:
                    # Closing: ``_down`` does nothing then, so the replica would stay up
                    # and be picked again; the request fails with the replica's error.
                    raise
                self._down(replica, error)
                continue
            finally:
                replica.in_flight -= 1
            sent = len(body) if not callable(body) else 0
            replica.stats.add(loop.time() - began, sent, len(answer))
            return answer

    async def _pick(self) -> Replica:
        while True:
            up = [replica for replica in self.replicas if replica.up.is_set()]
            if up:
                least = min(replica.in_flight for replica in up)
                tied = [replica for replica in up if replica.in_flight == least]
                self._turn += 1
                return tied[self._turn % len(tied)]
            if all(replica.gone for replica in self.replicas):
                raise NoReplicaLeft(self._none_left())
            await self._changed.wait()

    def _none_left(self) -> str:
        restarts = self.job.agent.replica_restarts
        return (
            f"no model replica is left: each of the {len(self.replicas)} stopped answering "
            f"and was tried {restarts} time(s) more (Agent.ReplicaRestarts) without coming "
            "back; see the log for each replica's last exit"
        )

    def _down(self, replica: Replica, error: BaseException) -> None:
        if not replica.up.is_set() or self._closing:
            return
        replica.up.clear()
        replica.stats.downs += 1
        log.warning("replica %d (%s) is down: %s", replica.index, replica.url, error)
        replica.recovery = asyncio.create_task(self._recover(replica))

    async def _recover(self, replica: Replica) -> None:
        """Bring ``replica`` back: restart its command, or wait for its ``/ping``; each try
        (a listed server's wait included) uses one of its ``Agent.ReplicaRestarts``."""
        timeout = float(self.job.agent.model_startup_timeout_seconds)
        attempt = 0
        while not self._closing:
            if replica.restarts_left <= 0:
                replica.gone = True
                log.error(
                    "replica %d (%s) is down for good after %d tr%s to bring it back",
                    replica.index,
                    replica.url,
                    attempt,
                    "y" if attempt == 1 else "ies",
                )
                self._wake()
                return
            replica.restarts_left -= 1
            attempt += 1
            await asyncio.sleep(
                backoff_seconds(
                    attempt, base_seconds=RESTART_BASE_SECONDS, cap_seconds=RESTART_CAP_SECONDS
                )
            )
            try:
                if replica.argv is not None:
                    await self._stop_replica(replica)
                    replica.process = await self._start_process(replica)
                    replica.stats.restarts += 1
                died = None if replica.process is None else replica.process.died
                assert self.settings is not None
                async with ModelClient(replica.url, self.settings, died=died) as probe:
                    await probe.wait_ready(timeout)
                replica.client = await self._client(replica)
            except (ModelError, ModelCommandError) as error:
                log.warning(
                    "replica %d (%s) did not come back: %s", replica.index, replica.url, error
                )
                continue
            log.info(
                "replica %d (%s) is back%s",
                replica.index,
                replica.url,
                f" after restart {replica.stats.restarts}" if replica.argv is not None else "",
            )
            replica.up.set()
            self._wake()
            return

    def _wake(self) -> None:
        """A replica came back or went for good: requests waiting for one look again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def up_count(self) -> int:
        """Replicas taking requests now."""
        return sum(replica.up.is_set() for replica in self.replicas)

    @property
    def restart_count(self) -> int:
        """Restarts of every replica so far."""
        return sum(replica.stats.restarts for replica in self.replicas)

    def summary(self) -> list[dict[str, object]]:
        return [replica.as_json() for replica in self.replicas]
