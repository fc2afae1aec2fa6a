"""Storage: S3 buckets and the local file system behind one small async interface.

Open one :class:`Stores` per process and ask it for the store of a location::

    async with open_stores(StorageSettings()) as stores:
        store = await stores.get(job.input.uri)          # an S3Store or the LocalStore
        files = await list_inputs(stores, "S3Prefix", job.input.uri, exclude=[...])
        async with store.read(files[0].info) as chunks:
            async for chunk in chunks: ...
        out = output_uri(files[0].relative_key, job.output.uri)
        async with (await stores.get(out)).open_upload(out.key) as upload:
            await upload.write(b"..."); await upload.commit()

The S3 client is created on first use of an ``s3://`` location, once, with the standard
credential chain, region (``us-east-1`` if none is configured) and endpoint
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` select an S3-compatible server, which
is then addressed path-style); it is closed when the ``Stores`` context ends.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from agent.codec.gzip import Gunzip, GzipError, gunzip
from agent.job.types import DataUri
from agent.storage.base import (
    MAX_PARTS,
    ChunkReader,
    InputError,
    ObjectChangedError,
    ObjectInfo,
    ObjectNotFoundError,
    PendingUpload,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    Store,
    Upload,
    UploadIdCallback,
    part_size,
)
from agent.storage.inputs import (
    InputFile,
    OutputKeyError,
    exclusions,
    list_inputs,
    output_uri,
    relative_key,
)
from agent.storage.local import LocalStore
from agent.storage.manifest import ManifestError, parse_manifest
from agent.storage.s3.store import S3Store

__all__ = [
    "MAX_PARTS",
    "ChunkReader",
    "Gunzip",
    "GzipError",
    "InputError",
    "InputFile",
    "LocalStore",
    "ManifestError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "OutputKeyError",
    "PendingUpload",
    "PreconditionFailed",
    "S3Store",
    "StorageError",
    "StorageSettings",
    "Store",
    "Stores",
    "Upload",
    "UploadIdCallback",
    "exclusions",
    "gunzip",
    "list_inputs",
    "open_stores",
    "output_uri",
    "parse_manifest",
    "part_size",
    "relative_key",
]

DEFAULT_REGION = "us-east-1"


def s3_config(settings: StorageSettings, *, custom_endpoint: bool) -> AioConfig:
    """The S3 client's configuration: pool size, timeouts, botocore's own quick retries."""
    options: dict[str, Any] = {
        "max_pool_connections": settings.max_pool_connections,
        "connect_timeout": settings.connect_timeout_seconds,
        "read_timeout": settings.read_timeout_seconds,
        "retries": {"mode": "standard", "max_attempts": 3},
        "tcp_keepalive": True,
        # Requests are built by this code, not by users: checking each against the
        # service model costs CPU on every call (a hot path with many small files).
        "parameter_validation": False,
        # Checksums only where S3 requires them: S3-compatible stores vary in their support
        # of the newer flexible checksums, and TLS already guards the bytes on the wire.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    if custom_endpoint:
        # Virtual-hosted names (bucket.host) rarely resolve for self-hosted servers.
        options["s3"] = {"addressing_style": "path"}
    return AioConfig(**options)


class Stores:
    """The stores of one process; use ``async with open_stores(settings) as stores``."""

    def __init__(self, settings: StorageSettings | None = None) -> None:
        self.settings = settings or StorageSettings()
        self.local = LocalStore(self.settings)
        self._exit = AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()
        self._buckets: dict[str, S3Store] = {}

    async def s3_client(self) -> Any:
        """The process's S3 client, created on first call."""
        async with self._opening:
            if self._client is None:
                session = get_session()
                region = session.get_config_variable("region") or DEFAULT_REGION
                custom = bool(
                    os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                )
                creator = session.create_client(
                    "s3",
                    region_name=region,
                    config=s3_config(self.settings, custom_endpoint=custom),
                )
                self._client = await self._exit.enter_async_context(creator)
        return self._client

    async def get(self, uri: DataUri) -> Store:
        """The store holding ``uri``: its bucket's ``S3Store``, or the ``LocalStore``."""
        if uri.is_local:
            return self.local
        return await self.bucket(uri.bucket)

    async def bucket(self, name: str) -> S3Store:
        store = self._buckets.get(name)
        if store is None:
            store = self._buckets[name] = S3Store(await self.s3_client(), name, self.settings)
        return store

    async def aclose(self) -> None:
        self._client = None
        self._buckets.clear()
        await self._exit.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_stores(settings: StorageSettings | None = None) -> Stores:
    """The process's stores, as an async context manager (nothing is opened until used)."""
    return Stores(settings)
