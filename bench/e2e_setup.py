"""What ``bench.e2e`` runs against: SeaweedFS, the two model servers, and the inputs.

Servers come from the test harness (``tests/support/servers.py``): each in a process group of its
own on 127.0.0.1, stopped by pid. Inputs are a block repeated (the block ends on a record
boundary, so the repetition is a valid file), written to local files for the runs against
the file system and uploaded to S3 in 64 MiB parts, so this process never holds a whole
input.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]

from bench.split import tfrecord_data  # noqa: E402
from tests.support.processes import free_port_block  # noqa: E402
from tests.support.servers import (  # noqa: E402  (the test harness)
    HOST,
    SeaweedFS,
    ServerProcess,
    listening_port,
    wait_until,
)

__all__ = ["SeaweedFS", "free_port_block"]

MIB = 1 << 20
PART_BYTES = 64 * MIB


class BenchModel:
    """``python -m bench.models --kind KIND`` on a port the kernel picked."""

    def __init__(self, kind: str, log_path: Path, *args: str) -> None:
        self.kind = kind
        self.log_path = log_path
        self.args = list(args)
        self.port: int | None = None
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return int(self.process.pid)

    def start(self) -> None:
        argv = [sys.executable, "-m", "bench.models", "--kind", self.kind, "--port", "0"]
        self.log_path.write_bytes(b"")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = ServerProcess(
            f"{self.kind} model", argv + self.args, log_path=self.log_path, cwd=ROOT, env=env
        )
        self.process.launch()
        if not wait_until(self._listening, 30.0):
            self.process.stop(grace_seconds=0)
            raise self.process.failure("never printed 'listening on'")

    def _listening(self) -> bool:
        assert self.process is not None
        self.port = listening_port(self.process, self.log_path)
        return self.port is not None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_seconds=5.0)

    def _call(self, method: str, path: str) -> dict[str, Any]:
        data = b"{}" if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds a live process (and its reaped children) used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Data:
    """One input file: ``block`` repeated ``repeats`` times."""

    block: bytes
    repeats: int

    @property
    def size(self) -> int:
        return len(self.block) * self.repeats

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            for _ in range(self.repeats):
                file.write(self.block)

    def upload(self, client: Any, bucket: str, key: str) -> None:
        if self.size <= PART_BYTES:
            client.put_object(Bucket=bucket, Key=key, Body=self.block * self.repeats)
            return
        per_part = max(1, PART_BYTES // len(self.block))
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)
        ids = {"Bucket": bucket, "Key": key, "UploadId": upload["UploadId"]}
        parts: list[dict[str, Any]] = []
        left = self.repeats
        while left:
            count = min(per_part, left)
            number = len(parts) + 1
            body = self.block * count
            answer = client.upload_part(**ids, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            left -= count
        client.complete_multipart_upload(**ids, MultipartUpload={"Parts": parts})


def _repeats(block: bytes, size: int) -> Data:
    return Data(block, max(1, round(size / len(block))))


def line_records(count: int, record_bytes: int) -> Data:
    """``count`` CSV records of exactly ``record_bytes`` bytes each (newline included)."""
    filler = b"0.5," * (record_bytes // 4)
    rows = [(b"%010d," % i + filler)[: record_bytes - 1] + b"\n" for i in range(count)]
    return Data(b"".join(rows), 1)


CSV_LINE_BYTES = 100


def csv_data(size: int, *, bad_every: int = 0) -> Data:
    """About ``size`` bytes of 100-byte CSV lines, as a 4 MiB block repeated; with
    ``bad_every`` N, every N-th line of the block says ``BAD`` (bench.models answers 400
    to a body holding one)."""
    line = b"%012d,0.123456789,alpha,beta,gamma,delta,epsilon,zeta,eta,theta,iota,kap\n"
    pad = b"x" * (CSV_LINE_BYTES - len(line % 0))
    rows = (4 * MIB) // CSV_LINE_BYTES
    bad = b"<BAD-RECORD>"  # bench.models.BAD_MARKER

    def row(i: int) -> bytes:
        text = line[:-1] % i + pad
        if bad_every and i % bad_every == bad_every - 1:
            text = text[: -len(bad)] + bad
        return text + b"\n"

    block = b"".join(row(i) for i in range(rows))
    return _repeats(block, size)


def tfrecord(size: int) -> Data:
    """About ``size`` bytes of TFRecord frames (payloads 256-2048 bytes), a block repeated."""
    return _repeats(tfrecord_data(4 * MIB), size)


def small_file(index: int, size: int) -> bytes:
    """One small CSV file of ``size`` bytes whose lines name the file."""
    line = b"file-%06d,0.25,0.5,0.75,1.0\n" % index
    body = line * (size // len(line) + 1)
    return body[: size - 1] + b"\n"


def write_small_files(directory: Path, count: int, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (directory / f"part-{index:06d}.csv").write_bytes(small_file(index, size))


def upload_small_files(client: Any, bucket: str, prefix: str, count: int, size: int) -> None:
    def put(index: int) -> None:
        key = f"{prefix}part-{index:06d}.csv"
        client.put_object(Bucket=bucket, Key=key, Body=small_file(index, size))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def listed(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """(key, size) of every object under ``prefix``."""
    found: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [(item["Key"], int(item["Size"])) for item in page.get("Contents", ())]
    return found


def delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    keys = [key for key, _ in listed(client, bucket, prefix)]
    for start in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
