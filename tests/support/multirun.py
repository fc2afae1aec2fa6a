"""Helpers for the many-instance tests (``tests/integration/test_multi_*.py``, docs/design.md §4).

Several ``bt-agent`` processes share one SeaweedFS and one model server. The model server
logs each body's SHA-256 but not who sent it, so every file's records carry the file's
name: each body then belongs to exactly one file, and the log tells how often each file
was sent to the model. The agents' summaries tell which instance did which file; the
state prefix (leases, completion records) tells what is going on while they run.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from tests.support.runjob import MIB, Agent, AgentRun, Record, line, request_bodies, write_job
from tests.support.servers import REPO_ROOT

# Every variable an orchestrator may set to say who an instance is (agent.coordination.plan).
IDENTITY_VARIABLES = (
    "JOB_COMPLETION_INDEX",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "AWS_BATCH_JOB_ARRAY_SIZE",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
)


def rows_of(name: str, count: int, width: int = 40) -> bytes:
    """``count`` CSV rows naming ``name`` (so its bodies are its own), of varied length."""
    return b"".join(
        b"%s,%d,%s\n" % (name.encode(), n, b"x" * (n * 7 % width)) for n in range(count)
    )


def records(data: bytes) -> list[Record]:
    """The records of SplitType Line."""
    return [line(row) for row in data.splitlines(keepends=True)]


def bodies_of(data: bytes, payload_mb: int = 1) -> list[bytes]:
    """The request bodies of one file under MultiRecord with MaxPayloadInMB ``payload_mb``."""
    return request_bodies(records(data), "MultiRecord", payload_mb * MIB)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BodyIndex:
    """Which file each request body belongs to, to count the model's requests per file."""

    def __init__(self, files: Mapping[str, bytes], payload_mb: int = 1) -> None:
        self.expected: dict[str, int] = {}
        self.owner: dict[str, str] = {}
        for key, data in files.items():
            bodies = bodies_of(data, payload_mb)
            self.expected[key] = len(bodies)
            for body in bodies:
                digest = sha(body)
                assert digest not in self.owner, f"a body of {key} is not unique to it"
                self.owner[digest] = key

    def per_file(self, requests: Iterable[Mapping[str, Any]]) -> Counter[str]:
        """How many requests the model received for each file (foreign bodies: ``?``)."""
        return Counter(self.owner.get(entry["body_sha256"], "?") for entry in requests)

    def sent_once(self, keys: Iterable[str]) -> Counter[str]:
        """What ``per_file`` must be when exactly ``keys`` were each transformed once."""
        return Counter({key: self.expected[key] for key in keys if self.expected[key]})


def summary_inputs(run: AgentRun, status: str | None = None) -> set[str]:
    """The input URIs in an instance's summary (those with ``status``, if given)."""
    return {uri for uri, entry in run.files().items() if status in (None, entry["Status"])}


# ----------------------------------------------------------------------------- S3 state


def state_prefix(job: Mapping[str, Any]) -> str:
    """The default state prefix's key (in the output bucket) of a job built by
    ``transform_job`` with ``S3OutputPath`` ``s3://<bucket>/out``."""
    return f"out/_bt-agent/{job['TransformJobName']}/"


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def read_json_objects(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The JSON bodies under ``prefix`` (objects deleted meanwhile are left out).

    A zero-length body is left out too: in a versioned bucket SeaweedFS can serve a key
    with no content for a moment while a conditional PUT or a DELETE replaces its latest
    version (seen once in CI, reading a lease during a takeover); the agent never writes one.
    """
    found = []
    for key in list_keys(client, bucket, prefix):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            continue
        if body:
            found.append(orjson.loads(body))
    return found


def leases(client: Any, bucket: str, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    return read_json_objects(client, bucket, state_prefix(job) + "leases/")


def completion_records(client: Any, bucket: str, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every completion record: one per object (Lease mode) or batched (Static mode)."""
    found = []
    for document in read_json_objects(client, bucket, state_prefix(job) + "done/"):
        found.extend(document["Batch"] if "Batch" in document else [document])
    return found


def completed_inputs(client: Any, bucket: str, job: Mapping[str, Any]) -> set[str]:
    """Input URIs with a ``Completed`` record in the state prefix."""
    found = completion_records(client, bucket, job)
    return {record["Input"] for record in found if record["Status"] == "Completed"}


def holder_pid(lease: Mapping[str, Any]) -> int:
    """The pid in a lease's instance label (``host:pid``)."""
    return int(str(lease["Instance"]).split(" ")[0].rsplit(":", 1)[1])


def output_versions(client: Any, bucket: str, prefix: str = "out/") -> Counter[str]:
    """How many versions each ``.out`` has (state objects left out)."""
    counts: Counter[str] = Counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            if version["Key"].endswith(".out"):
                counts[version["Key"]] += 1
    return counts


def enable_versioning(client: Any, bucket: str) -> None:
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


# ----------------------------------------------------------------------------- processes


def bt_agent(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS`` (status, plan…) to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def status_of(job: Mapping[str, Any], directory: Path) -> subprocess.CompletedProcess[str]:
    """``bt-agent status --job F`` for ``job``."""
    return bt_agent("status", "--job", str(write_job(job, directory)))


def wait_for(check: Callable[[], Any], timeout: float, what: str, *agents: Agent) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the
    agents' logs) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- agent {agent.pid}:\n{agent.log()[-3000:]}" for agent in agents)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
        time.sleep(0.05)


def show(title: str, text: str) -> None:
    """Print a captured command output (``pytest -s`` or ``-rP`` shows it)."""
    print(f"\n===== {title}\n{text.rstrip()}\n", flush=True)
