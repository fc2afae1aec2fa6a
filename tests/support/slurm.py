"""A one-node Slurm cluster of its own for the deploy test (deploy/slurm/, README "Deploying").

``SlurmCluster`` starts ``munged`` (its own key, socket, pid, seed and log files), then
``slurmctld`` and ``slurmd`` in the foreground with ``SLURM_CONF`` pointing at a slurm.conf
it wrote, on free ports, with every state, spool, pid and log file in one temp directory:
nothing outside it is read or written (the system's munge key and /run/munge are left
alone). The node is this host by its short name, addressed as 127.0.0.1, with 2 CPUs
oversubscribed up to 4 jobs per CPU, so a 3-task array runs at once on any machine.

The daemons are ``ServerProcess``es (tests/support/processes.py): registered until stopped,
stopped by pid (their process group), and killed by the kernel if pytest dies first.

``missing()`` says, in a sentence, why such a cluster cannot run here (packages absent, not
root), so the test can skip instead of failing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import (
    REPO_ROOT,
    ServerError,
    ServerProcess,
    free_port_block,
    wait_until,
)

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "scontrol", "scancel")
INSTALL = "apt-get install slurm-wlm munge (as root; .ci/run does it)"
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def _which(name: str) -> str | None:
    """``name`` on PATH, else in the sbin folders (a non-login root shell may lack them)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def missing() -> str | None:
    """Why a Slurm cluster cannot be started here, as a sentence; ``None`` when it can."""
    absent = [name for name in DAEMONS + CLIENTS + ("munge",) if _which(name) is None]
    if absent:
        return (
            f"Slurm and MUNGE are not installed ({', '.join(absent)} not found): "
            f"to run the Slurm deploy test, {INSTALL}"
        )
    if os.geteuid() != 0:
        return (
            "the Slurm deploy test starts its own slurmd, which runs jobs as their user and "
            "so must run as root: run the test as root (as .ci/run does)"
        )
    return None


_UNFINISHED = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}


def _ended(tasks: dict[str, dict[str, str]]) -> bool:
    return bool(tasks) and not any(task["JobState"] in _UNFINISHED for task in tasks.values())


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


class SlurmCluster:
    """``munged`` + ``slurmctld`` + ``slurmd`` on this host; ``start`` then ``stop`` (always)."""

    def __init__(self, *, start_timeout_seconds: float = 60.0) -> None:
        self.start_timeout_seconds = start_timeout_seconds
        # munged insists that every folder above its socket lets anyone in (o+x): a pytest
        # tmp_path lies under a 0700 folder, so the cluster has its own temp dir, 0711.
        self.directory = Path(tempfile.mkdtemp(prefix="bt-agent-slurm-"))
        self.directory.chmod(stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH)
        self.conf = self.directory / "slurm.conf"
        self.node = _short_hostname()
        self.processes: list[ServerProcess] = []

    # ------------------------------------------------------------------------- paths

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with ``SLURM_CONF`` set: for the client commands."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------------- start

    def start(self) -> None:
        try:
            self._start_munge()
            base = free_port_block(2)
            self._write_conf(base + 1, base + 2)
            for daemon in ("slurmctld", "slurmd"):
                self._launch(daemon, [_which(daemon) or daemon, "-D"])
            if not wait_until(self._node_idle, self.start_timeout_seconds, interval=0.2):
                raise ServerError(
                    f"the Slurm node {self.node} was not idle within "
                    f"{self.start_timeout_seconds:g} s (sinfo: {self._sinfo()!r})\n{self.logs()}"
                )
        except BaseException:
            self.stop()
            raise

    def _launch(self, name: str, argv: list[str]) -> ServerProcess:
        process = ServerProcess(
            name, argv, log_path=self.path(f"{name}.log"), cwd=self.directory, env=self.env
        )
        process.launch()
        self.processes.append(process)
        return process

    def _start_munge(self) -> None:
        key = self.path("munge.key")
        key.write_bytes(os.urandom(128))  # munged wants 32 bytes or more, owner-only
        key.chmod(stat.S_IRUSR | stat.S_IWUSR)
        socket_path = self.path("munge.socket")
        munged = self._launch(
            "munged",
            [
                _which("munged") or "munged",
                "--foreground",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={self.path('munged.pid')}",
                f"--seed-file={self.path('munged.seed')}",
                f"--log-file={self.path('munged.file.log')}",
            ],
        )
        if not wait_until(lambda: socket_path.exists() or not munged.running(), 20.0):
            raise munged.failure("did not create its socket within 20 s")
        if not munged.running():
            raise munged.failure("exited at start")

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        d = self.directory
        for folder in ("state", "spool"):
            (d / folder).mkdir()
        lines = [
            "ClusterName=btagent",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={d / 'munge.socket'}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.file.log'}",
            f"SlurmdLogFile={d / 'slurmd.file.log'}",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN",
            f"PartitionName=bt Nodes={self.node} OverSubscribe=FORCE:4 Default=YES "
            "MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _sinfo(self) -> str:
        try:
            done = self.run("sinfo", "--noheader", "--Node", "--format=%t", timeout=10)
        except subprocess.TimeoutExpired:
            return "(sinfo timed out)"
        return (done.stdout + done.stderr).strip()

    def _node_idle(self) -> bool:
        for process in self.processes:
            if not process.running():
                raise process.failure("exited while the cluster was starting")
        return self._sinfo() == "idle"

    # ------------------------------------------------------------------------- use

    def run(
        self,
        command: str,
        *args: str,
        timeout: float = 30.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster (``SLURM_CONF`` set), its output kept."""
        return subprocess.run(
            [_which(command) or command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or REPO_ROOT,
            env={**self.env, **(env or {})},
            check=False,
        )

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str]) -> str:
        """Submit: ``sbatch --parsable ARGS`` in ``cwd``; the job id (see ``wait_for_job``)."""
        done = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env)
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id.isdigit():
            raise ServerError(
                f"sbatch submitted no job (exit {done.returncode}): {done.stdout}{done.stderr}"
                f"\n{self.logs()}"
            )
        return job_id

    def tasks(self, job_id: str) -> dict[str, dict[str, str]]:
        """Array task id → its fields in ``scontrol show job`` (JobState, ExitCode…).

        Tasks not yet started share one entry whose id is a range (``"1-2"``).
        """
        done = self.run("scontrol", "--oneliner", "show", "job", job_id)
        if done.returncode != 0:
            raise ServerError(f"scontrol show job {job_id}: {done.stderr.strip()}")
        tasks: dict[str, dict[str, str]] = {}
        for row in done.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", row))
            if "ArrayTaskId" in fields:
                tasks[fields["ArrayTaskId"]] = fields
        return tasks

    def ended(self, job_id: str) -> bool:
        """True once every task of the job has ended (whatever its exit code)."""
        return _ended(self.tasks(job_id))

    def wait_for_job(self, job_id: str, timeout: float = 120.0) -> dict[str, dict[str, str]]:
        """Wait until no task of the job is pending or running; their ``tasks`` then.

        A cluster that never runs the job fails after ``timeout`` seconds (the job is
        cancelled, the daemons' logs are in the message) instead of hanging the suite.
        (``sbatch --wait`` would do, but it polls after 2 s, then 8 s, then 32 s: a job done
        in one second costs ten.)
        """
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks(job_id)
            if _ended(tasks):
                return tasks
            if time.monotonic() >= deadline:
                self.run("scancel", job_id)
                raise ServerError(
                    f"Slurm job {job_id} did not finish within {timeout:g} s; its tasks: "
                    f"{ {i: t.get('JobState') for i, t in tasks.items()} }\n{self.logs()}"
                )
            time.sleep(0.2)

    def logs(self, lines: int = 40) -> str:
        """The last lines of each daemon's log, for failure messages."""
        return "\n".join(
            f"--- {process.name} ({process.log_path}):\n{process.log_tail(lines)}"
            for process in self.processes
        )

    # ------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons by pid (slurmd first), remove the dir."""
        if any(p.name == "slurmctld" and p.running() for p in self.processes):
            try:
                self.run("scancel", "--user=root", timeout=10)
            except subprocess.TimeoutExpired:
                pass
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop(grace_seconds=10)
            except ServerError as error:
                errors.append(str(error))
        shutil.rmtree(self.directory, ignore_errors=True)
        if errors:
            raise ServerError("\n".join(errors))
