"""The soak's fault schedule, drawn from the seed, and the injectors.

A phase's schedule is a list of faults, each due once the phase's progress (the share of
its good records the models have answered, ``Events.good``) reaches its ``at``; every kind
appears once and ``Settings.extra_faults`` more are drawn among them. Progress rather than
the clock says when, so a slower or faster machine meets the same faults at the same point
of the work. Faults fire in order, one after the other; the model's faults (a fault mix
in the control file) stay on for their window while the next ones fire, so a model that
throws 500s meets a SeaweedFS restart or a paused instance.

Kinds:

* ``model_500``, ``model_reset``, ``model_timeout``, ``model_slow``: that share of bodies
  gets that fault for a window of seconds (``bench/soak_model.py``); ``model_413``: bodies
  of several records over a size get 413 for the window.
* ``replica_kill``: SIGKILL to one model replica's process group; the agent restarts it
  (README "Replicas").
* ``s3_restart``: SIGKILL to SeaweedFS, then a start on the same directory and ports.
* ``instance_kill``: SIGKILL to one instance, started again after a moment.
* ``instance_pause``: SIGSTOP to an instance holding a lease for longer than the lease's
  TTL, then SIGCONT: its lease is taken over (docs/design.md §4.4). Lease phase only.
* ``job_restart``: SIGTERM to every instance of a job, then all of them started again.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass

import orjson

from bench.soak_run import Cluster, Env, Launch, wait_exit
from tests.support.multirun import holder_pid, read_json_objects
from tests.support.processes import process_alive

MODEL_KINDS = ("model_500", "model_reset", "model_timeout", "model_slow", "model_413")
PROCESS_KINDS = ("replica_kill", "s3_restart", "instance_kill", "instance_pause", "job_restart")
KINDS = MODEL_KINDS + PROCESS_KINDS
_MIX_KEY = {"model_500": "500", "model_reset": "reset", "model_timeout": "timeout"}
_MIX_KEY |= {"model_slow": "slow", "model_413": "413"}
_MODEL_PID = re.compile(r"started the model command .* as pid (\d+)")


@dataclass
class Fault:
    kind: str
    at: float  # progress (0..1) at which it is due
    draw: int  # the fault's own seed: victim, window, share


def schedule(rng: random.Random, *, lease: bool, extra: int) -> list[Fault]:
    kinds = [k for k in KINDS if lease or k != "instance_pause"]
    kinds += rng.choices(kinds, k=extra)
    faults = [Fault(kind, rng.uniform(0.04, 0.8), rng.getrandbits(32)) for kind in kinds]
    return sorted(faults, key=lambda fault: fault.at)


class Injector:
    """Carries out the faults of one phase and counts them."""

    def __init__(self, env: Env, clusters: list[Cluster]) -> None:
        self.env = env
        self.clusters = clusters
        self.done: Counter[str] = Counter()  # process faults carried out
        self.skipped: Counter[str] = Counter()  # due while there was nothing to hit
        self.windows: dict[str, float] = {}  # mix key -> when its window ends
        self.mix: dict[str, float] = {}
        self.log: list[str] = []
        self.seconds = 0.0  # the phase's wall time, once it is over

    # ---------------------------------------------------------------- the model's faults

    def _write_mix(self) -> None:
        temporary = self.env.control.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(self.mix))
        os.replace(temporary, self.env.control)

    def expire(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        ended = [key for key, end in self.windows.items() if everything or end <= now]
        for key in ended:
            del self.windows[key]
            self.mix.pop(key, None)
        if ended:
            self._write_mix()

    def _window(self, fault: Fault, rng: random.Random) -> None:
        key = _MIX_KEY[fault.kind]
        seconds = rng.uniform(2.0, 6.0)
        if key == "413":
            self.mix[key] = rng.choice([6_000, 10_000, 16_000])
        else:
            self.mix[key] = rng.uniform(0.1, 0.3) if key != "timeout" else rng.uniform(0.04, 0.1)
        self.windows[key] = time.monotonic() + seconds
        self._write_mix()
        self.log.append(f"{fault.kind}: {key}={self.mix[key]:g} for {seconds:.1f} s")

    # ---------------------------------------------------------------- processes

    def fire(self, fault: Fault) -> None:
        rng = random.Random(fault.draw)
        if fault.kind in MODEL_KINDS:
            self._window(fault, rng)
            return
        hit = getattr(self, "_" + fault.kind)(rng)
        (self.done if hit else self.skipped)[fault.kind] += 1

    def _live(self, rng: random.Random, lease_only: bool = False) -> tuple[Cluster, Launch] | None:
        found = [
            (cluster, launch)
            for cluster in self.clusters
            if not lease_only or cluster.coordination == "Lease"
            for launch in cluster.running()
            if not launch.fate
        ]
        return rng.choice(found) if found else None

    def _replica_kill(self, rng: random.Random) -> bool:
        # Any time after the instance started its model commands, during their start-up
        # too: a replica that dies before its first /ping 200 is restarted like one lost
        # mid-run, while the other one serves (README "Replicas").
        picked = self._live(rng)
        if picked is None:
            return False
        log = picked[1].agent.log()
        pids = [int(p) for p in _MODEL_PID.findall(log)]
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive:
            return False
        victim = rng.choice(alive)
        try:
            os.killpg(victim, signal.SIGKILL)
        except ProcessLookupError:
            return False
        when = "" if "execution parameters:" in log else " (during its start-up)"
        self.log.append(f"replica_kill: model group {victim} of {picked[0].name}{when}")
        return True

    def _s3_restart(self, rng: random.Random) -> bool:
        port = self.env.seaweed.s3_port
        self.env.seaweed.stop(grace_seconds=0)
        time.sleep(rng.uniform(0.2, 1.5))
        began = time.monotonic()
        self.env.seaweed.start()
        if self.env.seaweed.s3_port != port:
            raise RuntimeError(
                f"SeaweedFS came back on port {self.env.seaweed.s3_port}, not {port}"
            )
        self.log.append(f"s3_restart: back on port {port} in {time.monotonic() - began:.1f} s")
        return True

    def _instance_kill(self, rng: random.Random) -> bool:
        picked = self._live(rng)
        if picked is None:
            return False
        cluster, launch = picked
        launch.fate = "killed"
        os.kill(launch.agent.pid, signal.SIGKILL)
        wait_exit(launch, 10)
        time.sleep(rng.uniform(0.2, 1.5))
        cluster.launch(launch.index)
        self.log.append(f"instance_kill: {cluster.name} instance {launch.index}, started again")
        return True

    def _instance_pause(self, rng: random.Random) -> bool:
        lease_clusters = [c for c in self.clusters if c.coordination == "Lease"]
        holders: list[tuple[Cluster, Launch]] = []
        for cluster in lease_clusters:
            leases = read_json_objects(
                self.env.client, self.env.bucket, cluster.state_prefix + "leases/"
            )
            pids = {holder_pid(lease) for lease in leases}
            holders += [(cluster, la) for la in cluster.running() if la.agent.pid in pids]
        holders = [(c, la) for c, la in holders if not la.fate]
        picked = rng.choice(holders) if holders else self._live(rng, lease_only=True)
        if picked is None:
            return False
        cluster, launch = picked
        seconds = self.env.settings.lease_ttl * 1.5 + rng.uniform(0.5, 1.5)
        launch.fate = "paused"
        os.kill(launch.agent.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(launch.agent.pid, signal.SIGCONT)
        held = "holding a lease" if holders else "holding no lease"
        self.log.append(
            f"instance_pause: {cluster.name} instance {launch.index} ({held}) for {seconds:.1f} s"
        )
        return True

    def _job_restart(self, rng: random.Random) -> bool:
        busy = [c for c in self.clusters if c.running()]
        if not busy:
            return False
        cluster = rng.choice(busy)
        stopped = [launch for launch in cluster.running()]
        for launch in stopped:
            launch.fate = f"{launch.fate}+stopped" if launch.fate else "stopped"
            launch.agent.signal(signal.SIGTERM)
        for launch in stopped:
            wait_exit(launch, 60)
        time.sleep(rng.uniform(0.2, 1.0))
        for launch in stopped:
            cluster.launch(launch.index)
        self.log.append(f"job_restart: {cluster.name}, {len(stopped)} instance(s) stopped, resumed")
        return True
