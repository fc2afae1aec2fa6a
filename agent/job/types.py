"""The job's settings as frozen dataclasses, and the locations they point at.

Field names carry units (``max_payload_mb``, ``invocations_timeout_seconds``); the
comments give the SageMaker field each one comes from. Public names are re-exported by
``agent.job``; import them from there.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent._compat import MIB
from agent.job.schema import MAX_PAYLOAD_MB, URI_FORMS, control_character, quote

BatchStrategy = Literal["MultiRecord", "SingleRecord"]
S3DataType = Literal["S3Prefix", "ManifestFile"]
CompressionType = Literal["None", "Gzip"]
SplitType = Literal["None", "Line", "RecordIO", "TFRecord"]
AssemblyType = Literal["None", "Line"]
JoinSource = Literal["None", "Input"]
Coordination = Literal["Static", "Lease"]

BATCH_STRATEGIES: tuple[BatchStrategy, ...] = ("MultiRecord", "SingleRecord")
S3_DATA_TYPES: tuple[S3DataType, ...] = ("S3Prefix", "ManifestFile")
COMPRESSION_TYPES: tuple[CompressionType, ...] = ("None", "Gzip")
SPLIT_TYPES: tuple[SplitType, ...] = ("None", "Line", "RecordIO", "TFRecord")
ASSEMBLY_TYPES: tuple[AssemblyType, ...] = ("None", "Line")
JOIN_SOURCES: tuple[JoinSource, ...] = ("None", "Input")
COORDINATIONS: tuple[Coordination, ...] = ("Static", "Lease")

# The execution parameters when neither the job file nor the model's
# /execution-parameters sets them (``agent.model.execparams`` resolves them).
DEFAULT_MAX_CONCURRENT_TRANSFORMS = 1
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_BATCH_STRATEGY: BatchStrategy = "MultiRecord"

DEFAULT_MODEL_URL = "http://127.0.0.1:8080"
DEFAULT_MIN_RESPONSE_MB = 64  # the least default cap on one model answer

URI_MAX_CHARS = 1024  # SageMaker's limit on S3Uri and S3OutputPath
# Lenient on purpose: S3-compatible stores and legacy AWS buckets allow more than today's
# AWS rules (3-63 lowercase characters); the store has the last word. This catches typos
# such as s3:///prefix or a space in the name.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True, slots=True)
class DataUri:
    """Where data lives: an S3 bucket and key (prefix), or an absolute local path.

    ``key`` is the S3 key for ``s3`` and the absolute, normalised path for ``file``;
    a trailing ``/`` is kept because S3 prefixes are plain string prefixes.
    """

    scheme: Literal["s3", "file"]
    bucket: str
    key: str

    def __str__(self) -> str:
        """The location as a URI, for messages and logs (not percent-encoded)."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        return f"file://{self.key}"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def join(self, *parts: str, directory: bool = False) -> DataUri:
        """This location with ``parts`` appended, exactly one ``/`` between any two."""
        pieces = [self.key.rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
        if self.scheme == "s3" and not pieces[0]:
            pieces = pieces[1:]  # the bucket root: no leading "/" in an S3 key
        key = "/".join(pieces) + ("/" if directory else "")
        return DataUri(self.scheme, self.bucket, key)

    def same_place(self, other: DataUri) -> bool:
        """Whether both name the same prefix, ignoring a trailing ``/``."""
        mine = (self.scheme, self.bucket, self.key.rstrip("/"))
        return mine == (other.scheme, other.bucket, other.key.rstrip("/"))


def parse_data_uri(text: str, cwd: str) -> DataUri:
    """Parse ``s3://bucket/prefix``, ``file:///abs/path`` or a local path (relative to ``cwd``).

    Raises ``ValueError`` with a sentence saying what is wrong and what is allowed.
    """
    if not text:
        raise ValueError(f"the location is empty; {URI_FORMS}")
    if (where := control_character(text)) is not None:
        raise ValueError(f"the location {where}")
    if text != text.strip():
        raise ValueError(f"{quote(text)} has leading or trailing spaces; remove them")
    if len(text) > URI_MAX_CHARS:
        raise ValueError(f"the location is {len(text)} characters long; at most {URI_MAX_CHARS}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return DataUri("file", "", _local_path(text, cwd))
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(
                f"{quote(text)} does not start with a valid bucket name; write s3://bucket/prefix "
                "with a bucket name of letters, digits, dots, hyphens or underscores"
            )
        return DataUri("s3", bucket, key)
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise ValueError(
                f"{quote(text)} is not an absolute file URI; write file:///absolute/path "
                "(three slashes), or give the path without file://"
            )
        return DataUri("file", "", _local_path(urllib.parse.unquote("/" + path), cwd))
    if scheme == "https":
        raise ValueError(f"{quote(text)} is an https:// URL; this agent needs s3://bucket/prefix")
    raise ValueError(f"{quote(text)} has an unsupported scheme {quote(scheme)}; {URI_FORMS}")


def _local_path(path: str, cwd: str) -> str:
    if "\x00" in path:
        raise ValueError("a local path cannot contain a NUL character")
    trailing = path.endswith("/") and path != "/"
    resolved = posixpath.normpath(posixpath.join(cwd, path))
    return resolved + "/" if trailing else resolved


def check_model_url(text: str) -> str:
    """Check a model server URL, ``http(s)://host[:port][/path]``; return it without a final ``/``.

    Raises ``ValueError`` with a sentence saying what is wrong. The sentence never repeats
    credentials, a query or a fragment (they may hold secrets), nor a control character.
    """
    if (where := control_character(text)) is not None:
        raise ValueError(f"the URL {where}")
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        # Checked first so the messages below never repeat a password.
        raise ValueError("credentials in the URL are not supported (they would end up in logs)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(
            "the URL has a query or fragment (not repeated here: it may hold a secret); "
            "give only scheme, host, port and path, as in http://127.0.0.1:8080"
        )
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        shown = "the URL" if "@" in text else quote(text)  # "@": perhaps a password
        raise ValueError(
            f"{shown} is not an http:// or https:// URL with a host and a valid port, "
            "as in http://127.0.0.1:8080"
        )
    return text.rstrip("/")


def replica_url(model_url: str, replica: int) -> str:
    """``model_url`` with its port (80 or 443 when it names none) plus ``replica``."""
    parts = urllib.parse.urlsplit(model_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{port + replica}"))


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ModelClientConfig:
    """How each ``POST /invocations`` is bounded (``ModelClientConfig``)."""

    invocations_timeout_seconds: int = 600  # per request, 1..3600
    invocations_max_retries: int = 3  # retries after the first attempt, 0..3


@dataclass(frozen=True, slots=True)
class TransformInput:
    """Where the input objects are and how they split into records (``TransformInput``)."""

    data_type: S3DataType
    uri: DataUri  # the S3Prefix, or the manifest object for ManifestFile
    content_type: str | None = None  # sent as Content-Type; None sends no such header
    compression: CompressionType = "None"
    split_type: SplitType = "None"


@dataclass(frozen=True, slots=True)
class TransformOutput:
    """Where ``.out`` objects go and how response bodies are joined (``TransformOutput``)."""

    uri: DataUri
    accept: str | None = None  # sent as Accept; None sends no such header
    assemble_with: AssemblyType = "None"
    kms_key_id: str | None = None  # SSE-KMS key for S3 outputs


@dataclass(frozen=True, slots=True)
class DataProcessing:
    """Per-record JSONPath filters and joining (``DataProcessing``); strings unparsed here."""

    input_filter: str = "$"
    output_filter: str = "$"
    join_source: JoinSource = "None"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What only this agent needs (the ``Agent`` object)."""

    model_url: str = DEFAULT_MODEL_URL  # no trailing "/"; /ping, /invocations are appended
    model_command: tuple[str, ...] | None = None  # argv the agent starts and stops itself
    model_startup_timeout_seconds: int = 600  # how long /ping may take to answer 200
    state_uri: DataUri | None = None  # None: JobSettings.state_uri gives the default
    coordination: Coordination = "Static"
    reorder_buffer_mb: int = 256  # cap on response bytes waiting for their turn, per instance
    # Cap on one /invocations answer in MiB; None: JobSettings.max_response_bytes decides.
    max_response_mb: int | None = None
    lease_ttl_seconds: int = 60  # Lease mode: a lease unrenewed this long may be taken over
    # At most this many records in a MultiRecord request body; None: no cap (SageMaker has none).
    max_records_per_request: int | None = None
    # Each answer must hold one line per record sent, else its file fails (AssembleWith Line).
    require_line_per_record: bool = False
    # Record isolation (README "Failed records"): None off; else the failed records an
    # instance may meet before its run fails, -1 for no limit.
    max_failed_records: int | None = None
    # Written as a failed record's line of output (AssembleWith Line); None: nothing.
    failed_record_placeholder: str | None = None
    # Servers already running, one replica each, when ModelUrl is a list; () otherwise.
    model_servers: tuple[str, ...] = ()
    model_replicas: int = 1  # ModelCommand (or container) processes started, port + i each
    replica_devices: tuple[str, ...] | None = None  # replica i's CUDA_VISIBLE_DEVICES
    replica_restarts: int = 3  # restarts a started replica may have before it stays down
    model_dir: str | None = None  # where model artifacts are unpacked; None: the default
    container_runtime: str | None = None  # docker or podman; None: the first on PATH
    # Files over this many MiB (Line, RecordIO, TFRecord; not gzip) are cut into shards of
    # about that size, each a unit of the plan and of leases (README "Shards"); 0: off.
    shard_size_mb: int = 0
    # Prometheus (README "Watching a run"): /metrics served on this port while the run
    # lasts (None: not served; 0: any free port, logged), on this address.
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    # Where the metrics are pushed every metrics_push_interval_seconds and once at the end.
    metrics_pushgateway_url: str | None = None
    metrics_push_interval_seconds: int = 10

    @property
    def replica_urls(self) -> tuple[str, ...]:
        """Where each replica listens: the servers listed, or ModelUrl's port + i."""
        if self.model_servers:
            return self.model_servers
        return tuple(replica_url(self.model_url, i) for i in range(self.model_replicas))

    @property
    def reorder_buffer_bytes(self) -> int:
        return self.reorder_buffer_mb * MIB

    @property
    def shard_bytes(self) -> int:
        return self.shard_size_mb * MIB


@dataclass(frozen=True, slots=True)
class JobSettings:
    """One validated job. Field names carry units; SageMaker names are in the comments."""

    transform_job_name: str  # TransformJobName
    input: TransformInput
    output: TransformOutput
    model_name: str | None = None  # ModelName (informational)
    max_concurrent_transforms: int | None = None  # requests in flight per instance; None: unset
    max_payload_mb: int | None = None  # MaxPayloadInMB (MiB); 0: no bound; None: unset
    batch_strategy: BatchStrategy | None = None  # None: unset
    # Values may be secrets: kept out of repr, and never put in a message or a log line.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    model_client: ModelClientConfig = ModelClientConfig()
    instance_count: int = 1  # TransformResources.InstanceCount
    data_processing: DataProcessing = DataProcessing()
    agent: AgentConfig = AgentConfig()

    @property
    def max_payload_bytes(self) -> int | None:
        """The request-body bound in bytes; 0 means unbounded, ``None`` not yet resolved."""
        return None if self.max_payload_mb is None else self.max_payload_mb * MIB

    @property
    def max_response_bytes(self) -> int:
        """The cap on one ``/invocations`` answer: ``Agent.MaxResponseMB`` MiB when set, else
        ``max(64, 4 × MaxPayloadInMB)`` MiB, with MaxPayloadInMB 0 (no bound) counted as 100
        (SageMaker's largest bound) and an unresolved one as the default 6."""
        if self.agent.max_response_mb is not None:
            return self.agent.max_response_mb * MIB
        payload_mb = (
            DEFAULT_MAX_PAYLOAD_MB
            if self.max_payload_mb is None
            else self.max_payload_mb or MAX_PAYLOAD_MB
        )
        return max(DEFAULT_MIN_RESPONSE_MB, 4 * payload_mb) * MIB

    @property
    def records_cap(self) -> int | None:
        """``Agent.MaxRecordsPerRequest`` where it can bind: MultiRecord bodies (an unresolved
        BatchStrategy counts as the default, MultiRecord) of records cut by a SplitType.
        ``None`` otherwise: SingleRecord bodies and SplitType None hold one record anyway."""
        cap = self.agent.max_records_per_request
        strategy = self.batch_strategy or DEFAULT_BATCH_STRATEGY
        if cap is None or strategy != "MultiRecord" or self.input.split_type == "None":
            return None
        return cap

    @property
    def state_uri(self) -> DataUri:
        """``Agent.StateUri``, else ``<S3OutputPath>/_bt-agent/<TransformJobName>/``."""
        if self.agent.state_uri is not None:
            return self.agent.state_uri
        return self.output.uri.join("_bt-agent", self.transform_job_name, directory=True)


@dataclass(frozen=True, slots=True)
class LoadedJob:
    """A parsed job file: the settings, the ignored fields' JSON paths, and warnings."""

    settings: JobSettings
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
