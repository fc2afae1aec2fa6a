"""Fixtures with real servers: SeaweedFS for S3, the example model server for /invocations.

Session-wide, one of each is started on first use and stopped at the end of the session.
Function fixtures put them back in a known state before each test: ``bucket`` and ``s3_env``
restart SeaweedFS if a test stopped it; ``model`` restarts a dead model server and resets it.
A test that needs a server it may break for good (kill it, make it exit) asks a factory
(``seaweedfs_factory``, ``model_server_factory``) for a private one.

At the very end, any process still registered is killed and the session fails: nothing
started here may outlive the suite.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.holding import HoldingProxy
from tests.support.record_model import RecordModel
from tests.support.servers import LIVE, ModelServer, SeaweedFS, ServerError, stop_all

_bucket_numbers = itertools.count(1)


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """The session's SeaweedFS: ``endpoint_url``, ``env()``, ``client()``, ``stop``/``start``…"""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point the standard AWS variables at SeaweedFS (and away from any ~/.aws); returns them."""
    s3_server.ensure_running()
    env = s3_server.env()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _bucket_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    return f"bt-test-{next(_bucket_numbers):04d}-{slug}"[:63].rstrip("-")


@pytest.fixture
def bucket(s3_server: SeaweedFS, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty bucket named after the test; deleted (contents and all) afterwards."""
    s3_server.ensure_running()
    name = _bucket_name(request.node.name)
    client = s3_server.sync_client()
    try:
        client.create_bucket(Bucket=name)
        yield name
        # SeaweedFS deletes non-empty buckets, and deleting frees the bucket's volumes (a
        # limited number). Best effort: a server a test left stopped or broken is no failure.
        if s3_server.running():
            with contextlib.suppress(BotoCoreError, ClientError):
                client.delete_bucket(Bucket=name)
    finally:
        client.close()


@pytest.fixture
def seaweedfs_factory(tmp_path: Path) -> Iterator[Callable[[], SeaweedFS]]:
    """Start private SeaweedFS servers (fresh data, fresh ports); all stopped after the test."""
    servers: list[SeaweedFS] = []

    def start() -> SeaweedFS:
        server = SeaweedFS(tmp_path / f"seaweedfs-{len(servers)}")
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        _stop_each(servers)


# ----------------------------------------------------------------------------- model server


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """The session's model server with default settings; tests use ``model`` instead."""
    server = ModelServer(tmp_path_factory.mktemp("model-server") / "model_server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def model(model_server: ModelServer) -> ModelServer:
    """The session's model server, alive, with default settings and an empty request log."""
    if not model_server.running():  # a test made it exit, or killed it
        model_server.start()
    model_server.reset()
    return model_server


@pytest.fixture
def model_server_factory(tmp_path: Path) -> Iterator[Callable[..., ModelServer]]:
    """Start private model servers: ``factory("--exit-after", "2", wait_for_ping=True)``."""
    servers: list[ModelServer] = []

    def start(*args: str, wait_for_ping: bool = True) -> ModelServer:
        server = ModelServer(tmp_path / f"model-server-{len(servers)}.log", *args)
        servers.append(server)
        server.start(wait_for_ping=wait_for_ping)
        return server

    try:
        yield start
    finally:
        _stop_each(servers)


def _stop_each(servers: list[SeaweedFS] | list[ModelServer]) -> None:
    errors = []
    for server in servers:
        try:
            server.stop()
        except ServerError as error:
            errors.append(str(error))
    if errors:
        raise ServerError("\n".join(errors))


@pytest.fixture
def record_model() -> Iterator[RecordModel]:
    """A ``RecordModel`` (tests/support/record_model.py) of the test's own: bad records,
    413s and short answers on demand."""
    model = RecordModel()
    model.start()
    try:
        yield model
    finally:
        model.stop()


# ----------------------------------------------------------------------------- leftovers


@pytest.fixture
def holding_proxy(s3_server: SeaweedFS) -> Iterator[Callable[..., HoldingProxy]]:
    """Start ``HoldingProxy``s in front of the session's SeaweedFS; all stopped after."""
    proxies: list[HoldingProxy] = []

    def start(hold: Callable[[web.Request], bool]) -> HoldingProxy:
        proxy = HoldingProxy(s3_server.endpoint_url, hold)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill whatever is still registered; a clean run that left something behind fails."""
    if not LIVE:
        return
    survivors = stop_all()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(
            f"ERROR: server processes outlived their fixtures and were killed: "
            f"{', '.join(survivors)}",
            red=True,
        )
    if exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
