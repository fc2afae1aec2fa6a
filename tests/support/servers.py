"""Real servers for the integration tests: one import for the launchers and their helpers.

``processes`` starts, registers and stops processes (and finds free ports); ``seaweedfs``
runs SeaweedFS; ``modelserver`` runs the example model server.
"""

from __future__ import annotations

from tests.support.modelserver import ModelServer
from tests.support.processes import (
    HOST,
    LIVE,
    REPO_ROOT,
    ServerError,
    ServerProcess,
    await_until,
    free_port,
    free_port_block,
    group_alive,
    http_status,
    listening_port,
    ports_free,
    process_alive,
    stop_all,
    wait_until,
)
from tests.support.seaweedfs import SeaweedFS, s3_client, weed_binary

__all__ = [
    "HOST",
    "LIVE",
    "REPO_ROOT",
    "ModelServer",
    "SeaweedFS",
    "ServerError",
    "ServerProcess",
    "await_until",
    "free_port",
    "free_port_block",
    "group_alive",
    "http_status",
    "listening_port",
    "ports_free",
    "process_alive",
    "s3_client",
    "stop_all",
    "wait_until",
    "weed_binary",
]
