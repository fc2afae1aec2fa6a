"""The soak's verdict: what the bucket, the state prefixes and the summaries must hold.

Every check compares with ``bench/soak_data.py``'s expectations (computed from the
generated records, never from the agent) or with a rule of docs/design.md:

* each ``.out`` byte for byte, each errors file entry for entry (README "Failed records
  and 413s"), no other object under an output prefix;
* exactly one version, and no delete marker, of each output object (versioning is on:
  a second commit of an output would be a second version, docs/design.md §4.5);
* no open multipart upload in the bucket (§4.6);
* under each state prefix only ``listing.json``, ``summary.json`` and completion records
  of whole files: no lease, upload record, shard object, shard record or probe left (§5,
  §4.10);
* ``summary.json`` Completed with the expected files, records and failed records (§4.8),
  and each instance's ``--summary`` entries with their files' expected counts;
* every instance ended as it should (0; 143 or killed by SIGTERM when the soak stopped
  it; anything once it was SIGKILLed), its peak RSS within ``rss_bound``.

When an ``.out`` differs, its answer lines say how: ``lost`` (a record's answer missing),
``duplicated`` (an answer more than once, or one that belongs elsewhere), ``reordered``
(answers out of input order: records outside the longest run in order) and ``partial``
(an output visible but incomplete, or an object that must not be there).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.soak_data import InputFile, JobData
from bench.soak_model import answer_line
from bench.soak_run import Cluster, Settings
from tests.support.multirun import list_keys
from tests.support.runjob import MIB

STATE = "_bt-agent/"


def rss_bound(s: Settings) -> int:
    """An instance's peak RSS may not pass: the interpreter and its libraries (measured at
    about 90 MiB), request bodies and answers in flight (1 MiB bodies, answers at most 2.5
    times as large, for each request slot of each replica), the reorder buffer, and two
    8 MiB upload parts; then a margin of a half for the allocator."""
    flight = s.replicas * s.concurrency * (1 + 2.5) * MIB
    return int((90 * MIB + flight + s.reorder_mb * MIB + 16 * MIB) * 1.5)


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    partial: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems


def _ordered_run(positions: list[int]) -> int:
    """The length of the longest increasing subsequence of ``positions``."""
    tails: list[int] = []
    for p in positions:
        i = bisect.bisect_left(tails, p)
        tails[i : i + 1] = [p]
    return len(tails)


def compare_out(v: Verdict, key: str, expected: bytes, found: bytes | None, placeholder: bytes):
    if found == expected:
        return
    want = [int(line[:8]) for line in expected.splitlines(keepends=True) if line != placeholder]
    if found is None:
        v.lost += len(want)
        v.fail(f"{key}: missing ({len(want)} records' answers lost)")
        return
    got: list[int] = []
    garbled = 0
    for line in found.splitlines(keepends=True):
        if line == placeholder:
            continue
        try:
            n = int(line[:8])
        except ValueError:
            garbled += 1
            continue
        if line != answer_line(n):
            garbled += 1
        got.append(n)
    lost = sum((Counter(want) - Counter(got)).values())
    extra = sum((Counter(got) - Counter(want)).values())
    where = {n: i for i, n in enumerate(want)}
    common = [where[n] for n in dict.fromkeys(got) if n in where]
    reordered = len(common) - _ordered_run(common)
    v.lost += lost
    v.duplicated += extra
    v.reordered += reordered
    if lost or garbled:
        v.partial += 1
    v.fail(
        f"{key}: not the expected bytes ({len(found)} bytes, {len(expected)} expected): "
        f"{lost} lost, {extra} duplicated or foreign, {reordered} reordered, {garbled} garbled"
    )


def check_outputs(v: Verdict, client: Any, bucket: str, data: JobData) -> None:
    keys = [k for k in list_keys(client, bucket, data.out) if STATE not in k]
    expected: dict[str, InputFile] = {data.out + f.rel + ".out": f for f in data.files}
    errors = {
        data.out + f.rel + ".errors.jsonl": f for f in data.files if any(r.bad for r in f.records)
    }
    placeholder = b"" if data.placeholder is None else data.placeholder.encode() + b"\n"
    for key in sorted(set(keys) - expected.keys() - errors.keys()):
        v.partial += 1
        v.fail(f"s3://{bucket}/{key}: an object that must not be there")
    for key, f in expected.items():
        found = _get(client, bucket, key) if key in keys else None
        compare_out(v, key, data.expected_out(f), found, placeholder or b"\0")
    for key, f in errors.items():
        found = _get(client, bucket, key) if key in keys else None
        want = data.expected_errors(bucket, f)
        got = None if found is None else [orjson.loads(t) for t in found.splitlines()]
        if got != want:
            bad = "missing" if got is None else f"{len(got)} entries, {len(want)} expected"
            first = next(
                (i for i, (a, b) in enumerate(zip(got or [], want, strict=False)) if a != b), None
            )
            if first is not None:
                bad += f"; entry {first} is {got[first]!r}, expected {want[first]!r}"
            v.fail(f"{key}: errors file not as expected: {bad}")


def check_versions(v: Verdict, client: Any, bucket: str, data: JobData) -> None:
    versions: Counter[str] = Counter()
    markers: Counter[str] = Counter()
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=data.out)
    for page in pages:
        for item in page.get("Versions", []):
            if STATE not in item["Key"]:
                versions[item["Key"]] += 1
        for item in page.get("DeleteMarkers", []):
            if STATE not in item["Key"]:
                markers[item["Key"]] += 1
    for key in sorted(versions):
        if versions[key] != 1 or markers[key]:
            if key.endswith(".out"):
                v.duplicated += versions[key] - 1
            v.fail(
                f"{key}: {versions[key]} versions and {markers[key]} delete markers, not 1 and 0"
            )


def check_uploads(v: Verdict, client: Any, bucket: str) -> None:
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        v.partial += 1
        v.fail(f"multipart upload of {upload['Key']} left open ({upload['UploadId']})")


def check_state(v: Verdict, client: Any, bucket: str, cluster: Cluster) -> None:
    prefix = cluster.state_prefix
    for key in list_keys(client, bucket, prefix):
        rel = key[len(prefix) :]
        if rel in ("listing.json", "summary.json"):
            continue
        if rel.startswith("done/"):
            document = orjson.loads(_get(client, bucket, key))
            records = document.get("Batch", [document])
            shards = [r for r in records if r.get("Shard")]
            if shards:
                v.fail(
                    f"{key}: {len(shards)} shard record(s) left (a file's assembly deletes them)"
                )
            continue
        v.partial += rel.startswith("shards/")
        v.fail(
            f"{key}: left behind (only listing, summary and completion records may stay); "
            f"{_history(client, bucket, key)}"
        )


def _history(client: Any, bucket: str, key: str) -> str:
    """A left-behind state object's versions, oldest first, and its body (for the report)."""
    answer = client.list_object_versions(Bucket=bucket, Prefix=key)
    items = [(item, "put") for item in answer.get("Versions", []) if item["Key"] == key]
    items += [(item, "delete") for item in answer.get("DeleteMarkers", []) if item["Key"] == key]
    items.sort(key=lambda pair: pair[0]["LastModified"])
    steps = [
        f"{kind} {item['LastModified'].isoformat()} {item.get('Size', '')}".rstrip()
        for item, kind in items
    ]
    body = _get(client, bucket, key) or b""
    return f"versions: {'; '.join(steps)}; body: {body[:600].decode(errors='replace')}"


def check_summaries(v: Verdict, client: Any, bucket: str, cluster: Cluster, bound: int) -> None:
    data = cluster.data
    key = cluster.state_prefix + "summary.json"
    found = _get(client, bucket, key)
    if found is None:
        v.fail(f"{key}: no job summary")
    else:
        summary = orjson.loads(found)
        # A file committed by an instance killed before its record is recorded by the
        # next one without the lost work's counts (docs/design.md §4.7): its records are
        # left out of Records, and the summary says how many files are so.
        sizes = {f"s3://{bucket}/{data.prefix}{f.rel}": len(f.records) for f in data.files}
        unknown = [e["Input"] for e in summary.get("Files") or [] if e.get("CountsUnknown")]
        want = {
            "TransformJobStatus": "Completed",
            "FilesTotal": len(data.files),
            "FilesCompleted": len(data.files),
            "Records": data.records - sum(sizes.get(uri, 0) for uri in unknown),
            "FailedRecords": data.failed_records,
            "FilesWithoutCounts": len(unknown),
        }
        got = {name: summary.get(name, 0) for name in want}
        if got != want:
            v.fail(f"{key}: {got}, expected {want}")
    by_uri = {f"s3://{bucket}/{data.prefix}{f.rel}": f for f in data.files}
    for launch in cluster.launches:
        run = launch.run
        assert run is not None
        name = f"{cluster.name} instance {launch.index} (pid {launch.agent.pid})"
        # A SIGTERM that lands before the agent set its handler (in its first moments)
        # ends it as the signal's default does: -15 here, 143 to a shell, like exit 143.
        allowed = {0} if "stopped" not in launch.fate else {0, 143, -15}
        if "killed" not in launch.fate and run.returncode not in allowed:
            v.fail(f"{name} ended {run.returncode}, expected one of {sorted(allowed)}")
        peak = max(launch.peak_rss, (run.summary or {}).get("PeakRSSBytes", 0))
        if peak > bound:
            v.fail(f"{name}: peak RSS {peak / MIB:.0f} MiB, over its bound {bound / MIB:.0f} MiB")
        for entry in (run.summary or {}).get("Files", []):
            f = by_uri.get(entry["Input"])
            if f is None or entry["Status"] != "Completed" or "/shards/" in entry["Output"]:
                continue
            counts = (entry.get("Records", 0), entry.get("FailedRecords", 0))
            want_counts = (len(f.records), sum(r.bad for r in f.records))
            if counts != want_counts:
                v.fail(
                    f"{name}: {entry['Input']} (records, failed) {counts}, expected {want_counts}"
                )


def _get(client: Any, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def verdict(client: Any, bucket: str, clusters: list[Cluster], settings: Settings) -> Verdict:
    v = Verdict()
    bound = rss_bound(settings)
    for cluster in clusters:
        check_outputs(v, client, bucket, cluster.data)
        check_versions(v, client, bucket, cluster.data)
        check_state(v, client, bucket, cluster)
        check_summaries(v, client, bucket, cluster, bound)
    check_uploads(v, client, bucket)
    return v
