"""The example model server (``python -m examples.model_server``) for the integration tests."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.support.processes import (
    HOST,
    REPO_ROOT,
    ServerError,
    ServerProcess,
    http_status,
    listening_port,
    wait_until,
)


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
        self.port = listening_port(self.process, self.log_path)
        return self.port is not None

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
