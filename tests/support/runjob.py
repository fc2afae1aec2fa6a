"""Run bt-agent the way users do, and work out on our own what its outputs must be.

* ``transform_job`` builds a CreateTransformJob document; a keyword left at ``None`` leaves
  its field out of the file, so "unset" means what it means to SageMaker.
* ``run_agent`` writes the job file and runs ``python -m agent --job F --summary S`` as a
  subprocess to the end; ``start_agent`` starts one in the background (SIGTERM tests, servers
  stopped mid-job). Either way, a model command the agent left running is reported (and
  killed), so every test can assert that nothing outlived the agent. ``run_in_process``
  runs the same entry point in the test's own process, for the many cases that check
  outputs only (it saves the interpreter's start-up).
* ``Record``, the frame encoders, ``request_bodies`` and ``assembled`` compute the request
  bodies and the output of an echo model from docs/design.md §2 and §1.8, without ``agent``.
* S3 helpers for fixtures and assertions, on a blocking botocore client.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import orjson

from tests.support.servers import REPO_ROOT, ServerProcess, process_alive, wait_until

MIB = 1 << 20
_job_numbers = itertools.count(1)
_MODEL_PID = re.compile(r"started the model command .* as pid (\d+)")


# ----------------------------------------------------------------------------- job files


def transform_job(
    name: str,
    source: str,
    output: str,
    *,
    model_url: str | None = None,
    data_type: str = "S3Prefix",
    split_type: str | None = None,
    batch_strategy: str | None = None,
    assemble_with: str | None = None,
    max_payload_mb: int | None = None,
    max_concurrent: int | None = None,
    content_type: str | None = None,
    accept: str | None = None,
    compression: str | None = None,
    timeout_seconds: int | None = None,
    max_retries: int | None = None,
    agent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A CreateTransformJob document; fields given as ``None`` are absent from it."""
    job_input: dict[str, Any] = {
        "DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": source}}
    }
    _put(job_input, ContentType=content_type, SplitType=split_type, CompressionType=compression)
    job_output: dict[str, Any] = {"S3OutputPath": output}
    _put(job_output, Accept=accept, AssembleWith=assemble_with)
    job: dict[str, Any] = {"TransformJobName": job_name(name)}
    _put(
        job,
        BatchStrategy=batch_strategy,
        MaxPayloadInMB=max_payload_mb,
        MaxConcurrentTransforms=max_concurrent,
    )
    client: dict[str, Any] = {}
    _put(client, InvocationsTimeoutInSeconds=timeout_seconds, InvocationsMaxRetries=max_retries)
    if client:
        job["ModelClientConfig"] = client
    job["TransformInput"] = job_input
    job["TransformOutput"] = job_output
    agent_fields = dict(agent or {})
    if model_url is not None:
        agent_fields.setdefault("ModelUrl", model_url)
    if agent_fields:
        job["Agent"] = agent_fields
    return job


def _put(target: dict[str, Any], **fields: Any) -> None:
    target.update({key: value for key, value in fields.items() if value is not None})


def job_name(text: str) -> str:
    """A valid TransformJobName made of ``text`` (letters, digits and single dashes)."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")
    return (slug or "job")[:63].rstrip("-")


def model_command(*args: str) -> list[str]:
    """``Agent.ModelCommand`` starting the example model server with ``args``."""
    return [sys.executable, "-m", "examples.model_server", "--host", "127.0.0.1", *args]


# ----------------------------------------------------------------------------- running


@dataclass
class AgentRun:
    """One finished run: exit code, summary (``None`` if none was written), log, timing."""

    returncode: int
    summary: dict[str, Any] | None
    log: str
    seconds: float
    model_pids: list[int] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)  # model command pids still alive after

    def files(self) -> dict[str, dict[str, Any]]:
        """The summary's file entries by input URI."""
        assert self.summary is not None, f"no summary was written; the log:\n{self.log}"
        return {entry["Input"]: entry for entry in self.summary["Files"]}

    def file(self, input_uri: str) -> dict[str, Any]:
        entries = self.files()
        assert input_uri in entries, f"{input_uri} is not in the summary: {sorted(entries)}"
        return entries[input_uri]

    @property
    def status(self) -> str | None:
        return None if self.summary is None else self.summary["TransformJobStatus"]

    def explain(self) -> str:
        """For assertion messages: the exit code, the summary and the agent's log."""
        summary = orjson.dumps(self.summary, option=orjson.OPT_INDENT_2).decode()
        return f"exit {self.returncode} after {self.seconds:.1f} s\n{summary}\n{self.log[-6000:]}"


class Agent:
    """A bt-agent subprocess started by ``start_agent``; ``wait`` gives its ``AgentRun``."""

    def __init__(self, process: ServerProcess, summary_path: Path, started: float) -> None:
        self.process = process
        self.summary_path = summary_path
        self.started = started

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def model_pids(self) -> list[int]:
        return [int(pid) for pid in _MODEL_PID.findall(self.log())]

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the agent alone (as an orchestrator would), not its group."""
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60.0) -> AgentRun:
        popen = self.process.popen
        assert popen is not None
        try:
            returncode = popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.stop(grace_seconds=0)
            raise AssertionError(
                f"bt-agent did not finish within {timeout:g} s; its log:\n{self.log()[-6000:]}"
            ) from None
        seconds = time.monotonic() - self.started
        self.process.stop(grace_seconds=0)  # reaps whatever else was left in its group
        summary = None
        if self.summary_path.exists():
            summary = orjson.loads(self.summary_path.read_bytes())
        pids = self.model_pids()
        return AgentRun(returncode, summary, self.log(), seconds, pids, _reap(pids))

    def kill(self) -> None:
        """Stop the agent and any model command it started (cleanup after a failed test)."""
        self.process.stop(grace_seconds=0)
        _reap(self.model_pids())


def _reap(pids: Iterable[int]) -> list[int]:
    """Model command pids still alive after their agent ended; SIGKILLed (their groups too)."""
    alive = [pid for pid in pids if not wait_until(lambda p=pid: not process_alive(p), 1.0)]
    for pid in alive:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return alive


def write_job(job: Mapping[str, Any], directory: Path) -> Path:
    path = directory / f"job-{next(_job_numbers)}.json"
    path.write_bytes(orjson.dumps(job, option=orjson.OPT_INDENT_2))
    return path


def start_agent(
    job: Mapping[str, Any],
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
) -> Agent:
    """Start ``python -m agent --job F --summary S`` in ``directory``; don't wait for it.

    The environment is this process's (where ``s3_env`` put the S3 variables) plus ``env``.
    The agent's stdout and stderr go to a log file in ``directory``.
    """
    path = write_job(job, directory)
    summary = path.with_suffix(".summary.json")
    argv = [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(summary), *args]
    process = ServerProcess(
        "bt-agent",
        argv,
        log_path=path.with_suffix(".log"),
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    started = time.monotonic()
    process.launch()
    return Agent(process, summary, started)


def run_agent(
    job: Mapping[str, Any],
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    timeout: float = 60.0,
) -> AgentRun:
    """Run the job to its end (see ``start_agent``)."""
    return start_agent(job, directory, env=env, args=args).wait(timeout)


def run_in_process(
    job: Mapping[str, Any], directory: Path, *, args: Sequence[str] = ()
) -> AgentRun:
    """Run the job through ``agent.cli.app.main`` in this process: the same code path as the
    command without the interpreter's start-up, for the many cases that only check outputs.

    The agent logs to this process's stderr (pytest shows it with a failure); ``log`` is empty.
    It must be called from a test that is not a coroutine: the agent runs its own event loop.
    """
    from agent.cli.app import main

    path = write_job(job, directory)
    summary_path = path.with_suffix(".summary.json")
    started = time.monotonic()
    returncode = main(["--job", str(path), "--summary", str(summary_path), *args])
    summary = orjson.loads(summary_path.read_bytes()) if summary_path.exists() else None
    return AgentRun(returncode, summary, "", time.monotonic() - started)


# ----------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Record:
    """One record: its bytes as in the file, and the body SingleRecord sends for it."""

    raw: bytes
    single: bytes


RECORDIO_MAGIC = struct.pack("<I", 0xCED7230A)


def recordio(*parts: bytes) -> Record:
    """A dmlc RecordIO record of one frame, or of several (cflag 1, 2…, 3) when given parts."""
    if len(parts) == 1:
        flags = [0]
    else:
        flags = [1] + [2] * (len(parts) - 2) + [3]
    raw = b"".join(
        RECORDIO_MAGIC + struct.pack("<I", flag << 29 | len(part)) + part + b"\0" * (-len(part) % 4)
        for flag, part in zip(flags, parts, strict=True)
    )
    return Record(raw, RECORDIO_MAGIC.join(parts))


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c.crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(payload: bytes) -> Record:
    """A TFRecord frame: length, its masked CRC-32C, payload, the payload's masked CRC-32C."""
    length = struct.pack("<Q", len(payload))
    return Record(length + _masked_crc(length) + payload + _masked_crc(payload), payload)


def line(data: bytes) -> Record:
    return Record(data, data)


def whole(data: bytes) -> list[Record]:
    """SplitType None: the object is one record; an empty object has none."""
    return [Record(data, data)] if data else []


def file_bytes(records: Sequence[Record]) -> bytes:
    return b"".join(record.raw for record in records)


def request_bodies(records: Sequence[Record], strategy: str, bound: int) -> list[bytes]:
    """The request bodies of one file: greedy packing of whole records (0: no bound)."""
    if strategy == "SingleRecord":
        return [record.single for record in records]
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and bound and size + len(record.raw) > bound:
            bodies.append(b"".join(current))
            current, size = [], 0
        current.append(record.raw)
        size += len(record.raw)
    if current:
        bodies.append(b"".join(current))
    return bodies


def assembled(bodies: Iterable[bytes], assemble_with: str) -> bytes:
    """An echo model's output: the bodies in order, each ending in ``\\n`` for ``Line``."""
    if assemble_with == "None":
        return b"".join(bodies)
    return b"".join(body if body.endswith(b"\n") else body + b"\n" for body in bodies)


def body_counts(bodies: Iterable[bytes]) -> Counter[tuple[str, int]]:
    """A multiset of (sha256, length), comparable with what the model logged."""
    return Counter((hashlib.sha256(body).hexdigest(), len(body)) for body in bodies)


def logged_counts(requests: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((entry["body_sha256"], entry["body_bytes"]) for entry in requests)


def header_names(entry: Mapping[str, Any]) -> dict[str, str]:
    """A logged request's headers, names lower-cased."""
    return {name.lower(): value for name, value in entry["headers"]}


def out_of_order(requests: Sequence[Mapping[str, Any]]) -> int:
    """How many requests were answered before one that arrived earlier."""
    inversions = 0
    latest = 0.0
    for entry in sorted(requests, key=lambda e: e["time"]):
        if entry["done"] is not None and entry["done"] < latest:
            inversions += 1
        latest = max(latest, entry["done"] or 0.0)
    return inversions


# ----------------------------------------------------------------------------- S3


def put_objects(client: Any, bucket: str, objects: Mapping[str, bytes], threads: int = 10) -> None:
    """PUT every object (a blocking botocore client is thread-safe)."""

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, objects.items()))


STATE_DIRECTORY = "_bt-agent/"  # docs/design.md §5: the default StateUri lies under S3OutputPath


def output_sizes(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Key → size of the objects under an output prefix, the agent's own state left out."""
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if STATE_DIRECTORY not in item["Key"]:
                sizes[item["Key"]] = item["Size"]
    return sizes


def output_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """The sorted keys under an output prefix, the agent's own state left out."""
    return sorted(output_sizes(client, bucket, prefix))


def local_outputs(directory: Path) -> dict[str, bytes]:
    """Relative path → content of the files under a local output directory, state left out."""
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in directory.rglob("*")
        if path.is_file() and STATE_DIRECTORY not in f"{path.relative_to(directory)}/"
    }


def get_objects(client: Any, bucket: str, keys: Iterable[str]) -> dict[str, bytes]:
    def get(key: str) -> tuple[str, bytes]:
        return key, client.get_object(Bucket=bucket, Key=key)["Body"].read()

    with ThreadPoolExecutor(10) as pool:  # botocore keeps 10 connections
        return dict(pool.map(get, keys))


def open_uploads(client: Any, bucket: str) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted."""
    answer = client.list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]
