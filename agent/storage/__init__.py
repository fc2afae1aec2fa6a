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

Callers outside this package import from here, never from its modules: ``base`` (the
interface, settings and errors), ``inputs`` (listing and manifests), ``local``, ``s3/``
(store, upload, and the retried call both use) and ``stores``.
"""

from __future__ import annotations

from agent.storage.base import (
    MAX_PARTS,
    MIN_PART_BYTES,
    ChunkReader,
    InputError,
    ObjectChangedError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PendingUpload,
    PreconditionFailed,
    StorageError,
    StorageSettings,
    Store,
    Upload,
    UploadIdCallback,
    min_part_size,
    part_size,
)
from agent.storage.inputs import (
    InputFile,
    ListingSource,
    OutputKeyError,
    Shard,
    errors_uri,
    exclusions,
    file_id,
    list_inputs,
    name_outputs,
    output_collisions,
    output_uri,
    relative_key,
)
from agent.storage.local import LocalStore
from agent.storage.manifest import ManifestError, parse_manifest
from agent.storage.s3.store import S3Store
from agent.storage.stores import Stores, open_stores

__all__ = [
    "name_outputs",
    "MAX_PARTS",
    "MIN_PART_BYTES",
    "ChunkReader",
    "InputError",
    "InputFile",
    "Shard",
    "ListingSource",
    "LocalStore",
    "ManifestError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
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
    "file_id",
    "list_inputs",
    "open_stores",
    "output_collisions",
    "output_uri",
    "errors_uri",
    "parse_manifest",
    "min_part_size",
    "part_size",
    "relative_key",
]
