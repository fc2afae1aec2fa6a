"""The soak's inputs and what bt-agent must make of them, computed without the agent.

Three jobs, all drawn from one ``random.Random``:

* ``lease`` — SplitType ``Line`` over an ``S3Prefix``: LF and CRLF files, a file of long
  lines, one whose last line has no newline, two empty files (one nested), a key with a
  space and a non-ASCII letter, and big files cut into shards (``Agent.ShardSizeMB``);
  ``AssembleWith`` ``Line`` with ``Agent.FailedRecordPlaceholder``.
* ``rec`` — ``RecordIO`` through a ``ManifestFile`` naming some of the files under its
  prefix (one listed file nested, one unlisted file left out): single- and multi-part
  records, empty payloads, an empty file and a big sharded file; ``AssembleWith`` ``None``.
* ``tf`` — ``TFRecord`` frames in gzip files (``CompressionType`` ``Gzip``), one of them a
  gzip stream of nothing; ``AssembleWith`` ``None``.

Every record carries a token (``bench/soak_model.py``): ``<r:N>`` for a good record,
``<x:N>`` for a poisoned one, N unique across the whole soak, so each answer line names
exactly one record and the verdict can tell lost, duplicated and reordered answers apart.
The expected ``.out`` is each good record's ``answer_line`` in input order (the
placeholder's line for a poisoned one under ``Line``); the expected errors file is one
entry per poisoned record as README "Failed records and 413s" specifies it.
"""

from __future__ import annotations

import base64
import gzip
import random
import string
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.soak_model import answer_line
from tests.support.runjob import MIB, Record, line, recordio, tfrecord

PLACEHOLDER = "FAILED"
RECORD_TEXT_LIMIT = 1 << 20  # a failed record over 1 MiB is in neither record_text nor _base64
_TEXT = (string.ascii_letters + string.digits + " ,.;:-_=+*/()[]{}!?#$%&'\"").encode()


@dataclass
class Rec:
    record: Record  # its bytes in the file, and its SingleRecord body
    number: int | None  # its token; None for a record without one (an empty payload)
    bad: bool = False


@dataclass
class InputFile:
    rel: str  # key under the job's input prefix: also its output's name
    records: list[Rec]
    data: bytes  # the object's bytes (gzip-compressed for the tf job)

    def plain_size(self) -> int:
        return sum(len(r.record.raw) for r in self.records)


@dataclass
class JobData:
    name: str  # lease, rec, tf
    split_type: str
    assemble_with: str
    prefix: str  # input prefix key, e.g. "line/"
    out: str  # output prefix key, e.g. "out-line/"
    files: list[InputFile]  # what the job processes, in listing (or manifest) order
    others: dict[str, bytes] = field(default_factory=dict)  # manifest, unlisted objects
    data_type: str = "S3Prefix"
    compression: str | None = None
    placeholder: str | None = None

    def objects(self) -> dict[str, bytes]:
        found = {self.prefix + f.rel: f.data for f in self.files}
        return {**found, **self.others}

    def expected_out(self, f: InputFile) -> bytes:
        stand_in = b"" if self.placeholder is None else self.placeholder.encode() + b"\n"
        parts = []
        for r in f.records:
            if r.bad:
                parts.append(stand_in)
            elif r.number is not None:
                parts.append(answer_line(r.number))
        return b"".join(parts)

    def expected_errors(self, bucket: str, f: InputFile) -> list[dict[str, Any]]:
        entries, offset = [], 0
        for index, r in enumerate(f.records):
            if r.bad:
                entry: dict[str, Any] = {
                    "input": f"s3://{bucket}/{self.prefix}{f.rel}",
                    "record": index,
                    "offset": offset,
                    "length": len(r.record.raw),
                    "status": 400,
                    "error": f"cannot read record {r.number}\n",
                    "attempts": 1,
                }
                if len(r.record.single) <= RECORD_TEXT_LIMIT:
                    try:
                        entry["record_text"] = r.record.single.decode()
                    except UnicodeDecodeError:
                        entry["record_base64"] = base64.b64encode(r.record.single).decode()
                entries.append(entry)
            offset += len(r.record.raw)
        return entries

    @property
    def records(self) -> int:
        return sum(len(f.records) for f in self.files)

    @property
    def failed_records(self) -> int:
        return sum(r.bad for f in self.files for r in f.records)


class Maker:
    """Draws records from ``rng``; numbers them from one counter shared by all jobs."""

    def __init__(self, rng: random.Random, poison: float) -> None:
        self.rng = rng
        self.poison = poison
        self.next = 0

    def token(self, bad: bool) -> tuple[bytes, int]:
        n = self.next
        self.next += 1
        return b"<%s:%08d>" % (b"x" if bad else b"r", n), n

    def text(self, size: int) -> bytes:
        return bytes(self.rng.choices(_TEXT, k=size))

    def bad(self) -> bool:
        return self.rng.random() < self.poison

    def lines(
        self,
        count: int,
        *,
        crlf: float = 0.0,
        long: float = 0.0,
        last_newline: bool = True,
        width: tuple[int, int] = (5, 120),
    ) -> list[Rec]:
        records = []
        for i in range(count):
            tok, n = self.token(bad := self.bad())
            size = self.rng.randint(40_000, 300_000) if self.rng.random() < long else None
            body = tok + b"," + self.text(size or self.rng.randint(*width))
            end = b"\r\n" if self.rng.random() < crlf else b"\n"
            if i == count - 1 and not last_newline:
                end = b""
            records.append(Rec(line(body + end), n, bad))
        return records

    def recordio(self, count: int, *, multi: float, empty: float, width: int = 60) -> list[Rec]:
        records = []
        for _ in range(count):
            if self.rng.random() < empty:
                records.append(Rec(recordio(b""), None))
                continue
            tok, n = self.token(bad := self.bad())
            first = tok + self.rng.randbytes(self.rng.randint(0, width))
            if self.rng.random() < multi:
                parts = [first] + [
                    self.rng.randbytes(self.rng.randint(0, 90))
                    for _ in range(self.rng.randint(1, 3))
                ]
                records.append(Rec(recordio(*parts), n, bad))
            else:
                records.append(Rec(recordio(first), n, bad))
        return records

    def tfrecords(self, count: int) -> list[Rec]:
        records = []
        for _ in range(count):
            tok, n = self.token(bad := self.bad())
            payload = tok + self.text(self.rng.randint(0, 30)) + self.rng.randbytes(4)
            records.append(Rec(tfrecord(payload), n, bad))
        return records

    def sized(self, make, target: int) -> list[Rec]:  # noqa: ANN001
        """Records from ``make(count)`` until they hold about ``target`` bytes; poisoned
        five times less often (each costs about 2·log2(MaxRecordsPerRequest) requests of
        its shard's, one after the other)."""
        records: list[Rec] = []
        size = 0
        poison, self.poison = self.poison, self.poison / 5
        while size < target:
            batch = make(200)
            records += batch
            size += sum(len(r.record.raw) for r in batch)
        self.poison = poison
        return records


def _file(rel: str, records: list[Rec], *, gzipped: bool = False) -> InputFile:
    raw = b"".join(r.record.raw for r in records)
    data = gzip.compress(raw, compresslevel=1, mtime=0) if gzipped else raw
    return InputFile(rel, records, data)


def make_jobs(rng: random.Random, scale: float, shard_mb: int) -> list[JobData]:
    """The three jobs of one round; ``scale`` 1 is the default size (a few minutes' run)."""
    m = Maker(rng, poison=0.004)

    def n(count: float) -> int:
        return max(3, int(count * scale))

    lines = [
        _file(f"part-{i:02d}.csv", m.lines(n(rng.randint(600, 2_400)), crlf=0.02))
        for i in range(n(10))
    ]
    lines.append(_file("crlf.csv", m.lines(n(1_500), crlf=1.0)))
    lines.append(_file("long-lines.csv", m.lines(n(40), long=0.3)))
    lines.append(_file("no-final-newline.csv", m.lines(n(700), last_newline=False)))
    lines.append(_file("empty.csv", []))
    lines.append(_file("sub/empty-too.csv", []))
    lines.append(_file("sub/odd name \u00e9.csv", m.lines(n(500), crlf=0.5)))
    big = max(1, round(2 * scale))
    for i in range(big):
        target = int(shard_mb * MIB * rng.uniform(2.2, 3.6))
        lines.append(
            _file(f"big-{i}.csv", m.sized(lambda c: m.lines(c, crlf=0.1, width=(100, 700)), target))
        )
    lines.sort(key=lambda f: f.rel.encode())  # listing order: S3 lists keys by their bytes
    lease = JobData("lease", "Line", "Line", "line/", "out-line/", lines, placeholder=PLACEHOLDER)

    rec_files = [
        _file(f"r-{i}.rec", m.recordio(n(rng.randint(400, 1_600)), multi=0.3, empty=0.02))
        for i in range(n(4))
    ]
    rec_files.append(_file("nested/deep.rec", m.recordio(n(500), multi=0.5, empty=0.0)))
    rec_files.append(_file("empty.rec", []))
    target = int(shard_mb * MIB * rng.uniform(2.2, 3.0))
    sized = m.sized(lambda c: m.recordio(c, multi=0.2, empty=0.01, width=600), target)
    rec_files.append(_file("big.rec", sized))
    rng.shuffle(rec_files)  # manifest order is not key order
    unlisted = m.recordio(50, multi=0.0, empty=0.0)
    manifest = [{"prefix": "s3://BUCKET/rec/"}, *(f.rel for f in rec_files)]
    rec = JobData(
        "rec",
        "RecordIO",
        "None",
        "rec/",
        "out-rec/",
        rec_files,
        others={
            "rec/unlisted.rec": b"".join(r.record.raw for r in unlisted),
            "manifests/rec.manifest": orjson.dumps(manifest),
        },
        data_type="ManifestFile",
    )

    tf_files = [
        _file(f"t-{i}.tfrecord.gz", m.tfrecords(n(rng.randint(500, 2_000))), gzipped=True)
        for i in range(n(4))
    ]
    tf_files.append(_file("nothing.tfrecord.gz", [], gzipped=True))
    tf_files.sort(key=lambda f: f.rel.encode())
    tf = JobData("tf", "TFRecord", "None", "tf/", "out-tf/", tf_files, compression="Gzip")
    return [lease, rec, tf]


def bind_bucket(jobs: list[JobData], bucket: str) -> None:
    """Put the bucket's name into the manifest (it is drawn before the bucket is named)."""
    for job in jobs:
        for key, data in job.others.items():
            if key.startswith("manifests/"):
                job.others[key] = data.replace(b"BUCKET", bucket.encode())
