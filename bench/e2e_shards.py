"""Scenario l of ``bench.e2e``: one big file on four instances against one (README "Shards of
one big file", docs/design.md §4.10).

The same agent job runs twice per run, in turn (four first in even runs, one in odd ones):

* **four**: ``Agent.ShardSizeMB`` set, ``--instance-count 4`` (Static coordination), four
  agents spawned at once, each starting its own model (``Agent.ModelCommand``: ``bench.models``
  serving one request at a time, 100 ms per MiB: a GPU's worth) on a port of its own
  (``--model-url``);
* **one**: the same job on one instance, without shards: the 'ideal' column.

Each run's time is wall time, from the first spawn to the last exit (model start-up
included, for both). The shards an instance did come from its ``--summary`` file; the
assembly's cost from the agents' logs: the seconds from the last shard's line (a shard's
output is under ``/shards/``; its line is logged after its completion record) to the line
of the ``.out`` (logged after the ``.out``'s commit, its record and the deletion of the shard
objects), and the ``.out`` line's own seconds (from the assembly's claim to its commit).
The ``.out`` of four instances must equal the one instance's byte for byte; no shard object
and no multipart upload may be left.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench import e2e_setup as setup
from bench.e2e_run import (
    BUCKET,
    Bench,
    Scenario,
    agent_env_cwd,
    agent_job,
    file_totals,
    is_shard,
    replica_models,
    write_job,
)

MIB, GIB = 1 << 20, 1 << 30
INSTANCES = 4
MIN_SHARDS = 16  # --l-shard-mb is lowered at small --scale to keep at least this many
SETUPS = ("four", "one")
OUT_NAME = "input.bin.out"

# ``<time> INFO <input> -> <output>: N records, N requests, ..., S s`` (agent/report.py)
DONE_LINE = re.compile(
    r"^(?P<at>\S+) INFO (?P<input>\S+) -> (?P<output>\S+): \d+ records.*?, "
    r"(?P<requests>\d+) requests, \d+ bytes in, \d+ bytes out, (?P<seconds>[\d.]+) s"
)


def shard_mb(bench: Bench) -> int:
    """ShardSizeMB of scenario l: ``--l-shard-mb``, lowered so the file has about 16 shards
    at least (rounded: a 512 MiB file of 100-byte lines is a few bytes short of 512 MiB,
    and 16 shards of 32 MiB split evenly over 4 instances where 17 of 31 MiB do not)."""
    size_mib = bench.input_bytes["l"] / MIB
    return max(1, min(int(bench.args.l_shard_mb), round(size_mib / MIN_SHARDS)))


@dataclass
class Instance:
    """One agent of a run, from its process and its ``--summary`` file."""

    index: int
    wall_seconds: float  # spawn to exit
    cpu_seconds: float  # user + sys from wait4 (its model's included once reaped)
    shards: int  # shards it completed
    requests: int  # requests its shards (or, unsharded, its files) took
    assembled: int  # .out files it assembled and committed
    lost: int  # assemblies another instance committed first


@dataclass
class ShardMeasure:
    """One run of one setup."""

    setup: str  # four | one
    wall_seconds: float  # the first spawn to the last exit
    cpu_seconds: float  # every instance's
    requests: int  # every instance's
    output_bytes: int
    output_sha256: str
    shards: int  # shards completed, over every instance
    instances: list[Instance] = field(default_factory=list)
    assembly_seconds: float | None = None  # last shard's line to the .out's line
    assembly_own_seconds: float | None = None  # the .out line's seconds
    redone: int = 0  # shards done again by the proof ("done again from byte")
    left: int = 0  # shard objects and multipart uploads left behind


@dataclass
class ShardRow:
    """Every run of scenario l."""

    scenario: str
    shard_mb: int
    input_bytes: int
    runs: dict[str, list[ShardMeasure]] = field(default_factory=lambda: {s: [] for s in SETUPS})


def _spawn_all(
    argvs: list[list[str]], env: dict[str, str], logs: list[Path], cwd: Path, timeout: float
) -> tuple[float, list[tuple[int, float, float]]]:
    """Start every argv at once; the wall seconds from the first spawn to the last exit,
    and (exit code, wall seconds from the first spawn, CPU seconds) of each."""
    started = time.monotonic()
    ends: list[tuple[int, float, float]] = [(-1, 0.0, 0.0)] * len(argvs)

    def wait(index: int, process: subprocess.Popen[bytes]) -> None:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        ends[index] = (process.returncode, time.monotonic() - started, cpu)

    processes: list[subprocess.Popen[bytes]] = []
    waiters: list[threading.Thread] = []
    try:
        for index, (argv, log) in enumerate(zip(argvs, logs, strict=True)):
            with open(log, "wb") as err:
                process = subprocess.Popen(
                    argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err
                )
            processes.append(process)
            waiters.append(threading.Thread(target=wait, args=(index, process), daemon=True))
            waiters[-1].start()
        deadline = started + timeout
        for waiter in waiters:
            waiter.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process, waiter in zip(processes, waiters, strict=True):
            if waiter.is_alive():  # past the timeout: killed, reported as failed
                process.kill()
                waiter.join()
    return max(wall for _, wall, _ in ends), ends


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _assembly(logs: list[Path], out_uri: str) -> tuple[float | None, float | None, int]:
    """From the agents' logs: seconds from the last shard's line to the ``.out``'s line, the
    ``.out`` line's own seconds, and how many shards the proof did again."""
    last_shard: float | None = None
    out_at: float | None = None
    own: float | None = None
    redone = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            redone += "done again from byte" in line
            found = DONE_LINE.match(line)
            if found is None:
                continue
            at = _stamp(found["at"])
            if "/shards/" in found["output"]:
                last_shard = at if last_shard is None else max(last_shard, at)
            elif found["output"] == out_uri:
                out_at, own = at, float(found["seconds"])
    if last_shard is None or out_at is None:
        return None, own, redone
    return out_at - last_shard, own, redone


def _sha256(bench: Bench, key: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    body = bench.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    while chunk := body.read(8 * MIB):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _left(bench: Bench, tag: str) -> int:
    """Shard objects and multipart uploads left under the run's output prefix."""
    prefix = f"out/{tag}/"
    shards = sum("/shards/" in key for key, _ in setup.listed(bench.s3, BUCKET, prefix))
    uploads = bench.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return shards + len(uploads)


def run_setup(bench: Bench, sc: Scenario, which: str, run: int, mb: int) -> ShardMeasure:
    """One run of one setup (four sharded instances, or one unsharded); raises with the
    tail of a failed instance's log."""
    tag = f"{sc.name}-{which}-{run}"
    count = INSTANCES if which == "four" else 1
    job = agent_job(bench, sc, "service", "s3", tag)
    port = setup.free_port_block(count) + 1
    replica_models(job, port, 1)
    if which == "four":
        job["Agent"]["ShardSizeMB"] = mb
    argv = write_job(bench, tag, job)[:-2]  # without its --summary: one per instance
    summaries = [bench.root / "jobs" / f"{tag}-{i}.summary.json" for i in range(count)]
    logs = [bench.root / "logs" / f"{tag}-{i}.log" for i in range(count)]
    argvs = [
        [*argv, "--summary", str(summaries[i]), "--model-url", f"http://127.0.0.1:{port + i}"]
        + (["--instance-index", str(i), "--instance-count", str(count)] if count > 1 else [])
        for i in range(count)
    ]
    env, cwd = agent_env_cwd(bench)
    wall, ends = _spawn_all(argvs, env, logs, cwd, bench.args.timeout)
    for i, (code, _, _) in enumerate(ends):
        if code != 0:
            tail = logs[i].read_text(errors="replace")[-3000:]
            raise RuntimeError(f"instance {i} of {tag} exited {code}\n{tail}")
    instances: list[Instance] = []
    for i, (_, seconds, cpu) in enumerate(ends):
        summary: dict[str, Any] = orjson.loads(summaries[i].read_bytes())
        entries = summary["Files"]
        shards = [e for e in entries if is_shard(e) and e["Status"] == "Completed"]
        outs = [e for e in entries if e["Output"].endswith("/" + OUT_NAME)]
        requests = (
            sum(e["Requests"] for e in shards) if shards else file_totals(summary)["Requests"]
        )
        instances.append(
            Instance(
                index=i,
                wall_seconds=seconds,
                cpu_seconds=cpu,
                shards=len(shards),
                requests=int(requests),
                assembled=sum(e["Status"] == "Completed" for e in outs),
                lost=sum(e["Status"] == "Lost" for e in outs),
            )
        )
    out_uri = bench.output_uri(tag, "s3") + OUT_NAME
    gap, own, redone = _assembly(logs, out_uri)
    size, digest = _sha256(bench, f"out/{tag}/{OUT_NAME}")
    left = _left(bench, tag)
    bench.clean(tag, "s3")
    return ShardMeasure(
        setup=which,
        wall_seconds=wall,
        cpu_seconds=sum(cpu for _, _, cpu in ends),
        requests=sum(i.requests for i in instances),
        output_bytes=size,
        output_sha256=digest,
        shards=sum(i.shards for i in instances),
        instances=instances,
        assembly_seconds=gap,
        assembly_own_seconds=own,
        redone=redone,
        left=left,
    )


def _check(sc: Scenario, run: int, four: ShardMeasure, one: ShardMeasure, shards: int) -> None:
    problems = []
    if four.output_sha256 != one.output_sha256:
        problems.append(
            f"the .out of four instances ({four.output_bytes} bytes, SHA-256 "
            f"{four.output_sha256[:12]}) is not the one instance's ({one.output_bytes} bytes, "
            f"{one.output_sha256[:12]})"
        )
    if not 0 <= four.requests - one.requests < shards:
        problems.append(
            f"four instances sent {four.requests} requests over {shards} shards, one "
            f"{one.requests}: more than one per inner shard edge apart"
        )
    if four.shards < shards:
        problems.append(f"{four.shards} shards completed of {shards}")
    if sum(i.assembled for i in four.instances) != 1:
        problems.append(f"{sum(i.assembled for i in four.instances)} instances committed the .out")
    if four.left:
        problems.append(f"{four.left} shard objects or multipart uploads left")
    if problems:
        raise RuntimeError(f"{sc.name} run {run}: " + "; ".join(problems))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def run_l(bench: Bench, sc: Scenario) -> ShardRow:
    """Every run of scenario l, checked; prints each run's instances as it ends."""
    mb = shard_mb(bench)
    size = bench.input_bytes[sc.name]
    shards = -(-size // (mb * MIB))
    row = ShardRow(sc.name, mb, size)
    for run in range(bench.args.l_runs):
        order = SETUPS if run % 2 == 0 else SETUPS[::-1]
        for which in order:
            row.runs[which].append(run_setup(bench, sc, which, run, mb))
        four, one = row.runs["four"][-1], row.runs["one"][-1]
        _check(sc, run, four, one, shards)
        shares = ", ".join(
            f"#{i.index} {i.shards} in {i.wall_seconds:.1f} s"
            + (" +.out" if i.assembled else "")
            + (" (an assembly lost)" * i.lost)
            for i in four.instances
        )
        print(
            f"  {sc.name} run {run}: {shards} shards of {mb} MiB; shards per instance: {shares}; "
            f"the .out {_seconds(four.assembly_seconds)} after the last shard's line (its own "
            f"line {_seconds(four.assembly_own_seconds)}); requests {four.requests} against "
            f"{one.requests} ({four.requests - one.requests:+d}); {four.redone} redone; .out equal "
            f"({four.output_bytes} bytes)",
            flush=True,
        )
    return row


HEAD = (
    f"{'input':>9} {'shards':>10} | {'wall s':<6}{'four':>8}{'one':>8}{'speed-up':>9} | "
    f"{'CPU s':<5}{'four':>7}{'one':>7} | {'requests':<8}{'four':>6}{'one':>6} | "
    f"{'shards per instance':<20} | {'assembly s':<10}{'gap':>6}{'own':>6} | verdict"
)


def print_l_table(sc: Scenario, row: ShardRow) -> None:
    """One line of medians; each instance's shards and the assembly from every run."""
    four, one = row.runs["four"], row.runs["one"]
    if not four:
        return

    def median(runs: list[ShardMeasure], value: Any) -> float:
        return float(statistics.median(value(m) for m in runs))

    wall4, wall1 = median(four, lambda m: m.wall_seconds), median(one, lambda m: m.wall_seconds)
    speedup = wall1 / wall4 if wall4 > 0 else float("nan")
    gaps = [m.assembly_seconds for m in four if m.assembly_seconds is not None]
    owns = [m.assembly_own_seconds for m in four if m.assembly_own_seconds is not None]
    shares = "/".join(
        str(round(statistics.median(m.instances[i].shards for m in four))) for i in range(INSTANCES)
    )
    nominal = -(-row.input_bytes // (row.shard_mb * MIB))
    print(
        f"\n({sc.group}) {sc.title}; wall seconds, first spawn to last exit; median of "
        f"{len(four)} run(s)"
    )
    print(HEAD)
    print("-" * len(HEAD))
    size = (
        f"{row.input_bytes / GIB:.2f} GiB"
        if row.input_bytes >= GIB
        else (f"{row.input_bytes / MIB:.0f} MiB")
    )
    verdict = "ok" if speedup >= sc.target else f"BELOW {sc.target:g}"
    print(
        f"{size:>9} {f'{nominal} x {row.shard_mb} MiB':>10} | {'':<6}{wall4:8.1f}{wall1:8.1f}"
        f"{speedup:9.2f} | {'':<5}{median(four, lambda m: m.cpu_seconds):7.1f}"
        f"{median(one, lambda m: m.cpu_seconds):7.1f} | {'':<8}"
        f"{median(four, lambda m: m.requests):6.0f}{median(one, lambda m: m.requests):6.0f} | "
        f"{shares:<20} | {'':<10}{statistics.median(gaps) if gaps else float('nan'):6.2f}"
        f"{statistics.median(owns) if owns else float('nan'):6.2f} | {verdict}"
    )
