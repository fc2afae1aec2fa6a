"""Processes for the integration tests and benchmarks: start, register, stop, ports.

Each server is a subprocess in a session (process group) of its own, listening on 127.0.0.1 only.
It is stopped by pid: SIGTERM to its group, SIGKILL after a grace period, then SIGKILL to whatever
is left in the group. Every started process is registered in ``LIVE`` until it is stopped, so the
suite can prove that nothing survives it. On Linux the servers also get SIGKILL from the kernel if
the pytest process dies first (``PR_SET_PDEATHSIG``), so even a killed test run leaves nothing.

Blocking methods (``start``, ``stop``, ``restart``) are for fixtures; tests on an event loop use
the ``a``-prefixed twins, which wait with ``asyncio.sleep`` so the code under test keeps running
while a server goes down or comes back.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LIVE: dict[int, ServerProcess] = {}  # pid -> process, from start until the group is gone

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server did not start or stop; the message ends with the tail of its log."""


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when pytest dies (Linux only)."""
    # The death signal follows the *thread* that forked, so only the main thread may use it:
    # a server started from an executor thread would die when that thread is retired.
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork, not in the child

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live pid from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[2])


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` runs (zombies aside, see ``process_alive``)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    # An orphaned child's zombie lingers until init reaps it, and some container inits never
    # do; killpg(pgid, 0) would report such a group alive forever, so read /proc instead.
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def ports_free(ports: range | list[int]) -> bool:
    """True when every port can be bound on 127.0.0.1 right now (as a server would bind it)."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port_block(span: int, *, low: int = 10_000, high: int = 32_000) -> int:
    """A base port B such that B+1 … B+span are all free.

    The range stays below Linux's ephemeral ports (32768+) so outgoing connections of other
    programs cannot take a port between this probe and the server's bind.
    """
    for _ in range(200):
        base = random.randrange(low, high - span)
        if ports_free(range(base + 1, base + span + 1)):
            return base
    raise ServerError(f"no block of {span} free ports found in {low}..{high}")


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the ephemeral range (see ``free_port_block``)."""
    return free_port_block(1) + 1


def http_status(url: str, *, timeout: float = 1.0) -> int | None:
    """The HTTP status of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


class ServerProcess:
    """One subprocess in a session of its own, logging to a file, stopped by pid."""

    def __init__(
        self, name: str, argv: list[str], *, log_path: Path, cwd: Path, env: dict[str, str]
    ) -> None:
        self.name, self.argv, self.log_path, self.cwd, self.env = name, argv, log_path, cwd, env
        self.popen: subprocess.Popen[bytes] | None = None
        self.gone = True  # no process of ours is left: never signal this pid (it may be reused)

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ServerError(f"{self.name} has not been started")
        return self.popen.pid

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running():
            raise ServerError(f"{self.name} is already running as pid {self.pid}")
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # its own process group: killpg reaches its children
                preexec_fn=_die_with_parent(),
            )
        self.gone = False
        LIVE[self.popen.pid] = self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return None if self.popen is None else self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_bytes()[-16_384:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ServerError:
        return ServerError(
            f"{self.name}: {what}; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _signal_group(self, signum: int) -> None:
        if self.gone:
            return
        try:
            os.killpg(self.pid, signum)  # the pid is the group id: start_new_session
        except ProcessLookupError:
            pass

    def _reaped(self) -> bool:
        """True once the process has exited and nothing else is left in its group."""
        if self.running():
            return False
        if group_alive(self.pid):
            self._signal_group(signal.SIGKILL)  # a child that outlived the leader
            return False
        self.gone = True
        LIVE.pop(self.pid, None)
        return True

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace_seconds`` (0: at once); wait until gone."""
        if self.gone:
            return
        self._signal_group(signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL)
        if not wait_until(self._reaped, grace_seconds):
            self._signal_group(signal.SIGKILL)
            if not wait_until(self._reaped, 10.0):
                raise self.failure(f"process group {self.pid} survived SIGKILL")

    async def astop(self, grace_seconds: float = 10.0) -> None:
        """``stop`` for tests on an event loop."""
        if self.gone:
            return
        self._signal_group(signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL)
        if not await await_until(self._reaped, grace_seconds):
            self._signal_group(signal.SIGKILL)
            if not await await_until(self._reaped, 10.0):
                raise self.failure(f"process group {self.pid} survived SIGKILL")


def listening_port(process: ServerProcess, log_path: Path) -> int | None:
    """The port a server printed as ``listening on http://HOST:PORT`` in its log, if it has yet.

    Raises the process's failure if it exited before printing it.
    """
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("listening on http://"):
            return int(line.rsplit(":", 1)[1])
    if not process.running():
        raise process.failure("exited before listening")
    return None


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def await_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """``wait_until`` that yields to the event loop; ``check`` runs in a thread (it may block)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def stop_all() -> list[str]:
    """SIGKILL every registered process group; the names of those that were still alive."""
    survivors = []
    for process in list(LIVE.values()):
        if group_alive(process.pid):
            survivors.append(f"{process.name} (pid {process.pid})")
        try:
            process.stop(grace_seconds=0)
        except ServerError as error:
            survivors.append(str(error))
    return survivors


atexit.register(stop_all)  # an interrupted run (Ctrl-C, an error in a hook) still cleans up
