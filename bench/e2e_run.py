"""How ``bench.e2e`` runs one program once: its command, its process, what it reports.

A run spawns the agent (``python -m agent --job``, from ``--agent-root`` when given) or
the ideal pipeline (``python -m bench.ideal``), waits for it with ``wait4`` (CPU seconds of
the process and its reaped children), reads the model's counters and SeaweedFS's CPU
around it, checks that it wrote one output per input and that the model saw the requests
it reports, then removes its outputs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import e2e_setup as setup

BUCKET = "bt-bench-e2e"
MIB = 1 << 20
PIPELINES = ("agent", "ideal")


@dataclass(frozen=True)
class Scenario:
    """One scenario: its input, how it is cut, what the model answers, what is counted."""

    name: str  # a, b, c, d, e1, e2
    group: str  # the --only letter and the table it is printed in
    title: str
    split_type: str
    strategy: str
    content_type: str  # also chooses the model's answer (bench.models)
    unit: str
    target: float  # throughput ratio agent/ideal wanted against the service model
    models: tuple[str, ...]
    # A feature under measurement: Agent fields of the agent's job, its AssembleWith, and a
    # cap on records per body that both programs apply (0: none).
    agent_fields: tuple[tuple[str, object], ...] = ()
    assemble_with: str = "None"
    max_records: int = 0
    bad_every: int = 0  # one line in this many is bad (the model answers 400); the ideal
    # then reads ``<name>-ideal/in/``, the same input without them
    # Model replicas the agent starts itself (Agent.ModelCommand with {port}): bench.models,
    # one request at a time each (a GPU's worth); the "ideal" column is then the same agent
    # job with one replica. 0: the harness's model servers, as in every other scenario.
    replicas: int = 0
    # Sharding (Agent.ShardSizeMB): the agent's job cuts the input into about this many
    # shards, ShardSizeMB = max(1, input MiB // shard_parts), at any --scale. 0: off.
    shard_parts: int = 0
    metrics: bool = False  # /metrics served and pushed to a Pushgateway every second


@dataclass
class Measure:
    """One run of one program."""

    pipeline: str
    seconds: float  # the program's own, after imports
    wall_seconds: float  # spawn to exit
    cpu_seconds: float  # user + sys from wait4
    sys_seconds: float  # the system part of it
    files: int
    requests: int
    input_bytes: int
    output_bytes: int
    peak_rss_bytes: int
    model_busy_seconds: float  # service time the model slept during the run
    model_in_flight_seconds: float  # integral of the requests in progress at the model
    model_cpu_seconds: float
    s3_cpu_seconds: float


@dataclass
class Row:
    """Every run of one scenario against one model and one store."""

    scenario: str
    model: str
    store: str
    runs: dict[str, list[Measure]] = field(default_factory=lambda: {p: [] for p in PIPELINES})


@dataclass
class Bench:
    """Servers, places and settings shared by every run."""

    args: argparse.Namespace
    root: Path
    s3: Any
    s3_env: dict[str, str]
    s3_pid: int
    models: dict[str, setup.BenchModel]
    startup_cpu: dict[str, float] = field(default_factory=dict)
    input_bytes: dict[str, int] = field(default_factory=dict)  # per scenario, once written
    pushgateway: str = ""  # the Pushgateway stand-in's URL (scenario m), once started

    def input_uri(self, name: str, store: str) -> str:
        if store == "s3":
            return f"s3://{BUCKET}/{name}/in/"
        return (self.root / "data" / name / "in").as_uri() + "/"

    def output_uri(self, tag: str, store: str) -> str:
        if store == "s3":
            return f"s3://{BUCKET}/out/{tag}/"
        return (self.root / "out" / tag).as_uri() + "/"

    def clean(self, tag: str, store: str) -> None:
        if store == "s3":
            setup.delete_prefix(self.s3, BUCKET, f"out/{tag}/")
        else:
            shutil.rmtree(self.root / "out" / tag, ignore_errors=True)

    def outputs(self, tag: str, store: str) -> int:
        """How many ``.out`` objects a run left."""
        if store == "s3":
            return sum(k.endswith(".out") for k, _ in setup.listed(self.s3, BUCKET, f"out/{tag}/"))
        return sum(1 for _ in (self.root / "out" / tag).rglob("*.out"))


def _spawn(
    argv: list[str], env: dict[str, str], log: Path, stdout: Path, timeout: float, cwd: Path
) -> tuple[int, float, float, float]:
    """Run ``argv``; exit code, wall seconds, CPU seconds (wait4: user + sys), sys seconds."""
    started = time.monotonic()
    with open(log, "wb") as err, open(stdout, "wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        watchdog.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return process.returncode, time.monotonic() - started, cpu, usage.ru_stime


def shard_size_mb(input_bytes: int, parts: int) -> int:
    """The ShardSizeMB that cuts ``input_bytes`` into about ``parts`` shards."""
    return max(1, round(input_bytes / MIB / parts))


REPLICA_MODEL = ["--kind", "service", "--workers", "1", "--base-ms", "2", "--ms-per-mib", "100"]


def agent_job(bench: Bench, sc: Scenario, model: str, store: str, tag: str) -> dict[str, Any]:
    """The agent's job file of one run, as a dict."""
    a = bench.args
    job: dict[str, Any] = {
        "TransformJobName": f"bench-{sc.name}",
        "MaxConcurrentTransforms": a.concurrency,
        "MaxPayloadInMB": a.payload_mb,
        "BatchStrategy": sc.strategy,
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bench.input_uri(sc.name, store)}
            },
            "ContentType": sc.content_type,
            "SplitType": sc.split_type,
        },
        "TransformOutput": {
            "S3OutputPath": bench.output_uri(tag, store),
            "AssembleWith": sc.assemble_with,
        },
        "Agent": {"ModelUrl": bench.models[model].url, **dict(sc.agent_fields)},
    }
    if sc.metrics:  # served on a free port, and pushed every second (as often as a scrape)
        job["Agent"].update(
            MetricsPort=0,
            MetricsAddress="127.0.0.1",
            MetricsPushgatewayUrl=bench.pushgateway,
            MetricsPushIntervalSeconds=1,
        )
    if sc.max_records:
        job["Agent"]["MaxRecordsPerRequest"] = sc.max_records
    if sc.shard_parts:
        job["Agent"]["ShardSizeMB"] = shard_size_mb(bench.input_bytes[sc.name], sc.shard_parts)
    return job


def replica_models(job: dict[str, Any], port: int, replicas: int) -> None:
    """Let the agent start ``replicas`` one-at-a-time models (REPLICA_MODEL) from ``port``."""
    job["Agent"]["ModelUrl"] = f"http://127.0.0.1:{port}"
    job["Agent"]["ModelCommand"] = [
        sys.executable, "-m", "bench.models", "--host", "127.0.0.1", "--port", "{port}",
        *REPLICA_MODEL,
    ]  # fmt: skip
    job["Agent"]["ModelReplicas"] = replicas


def write_job(bench: Bench, tag: str, job: dict[str, Any]) -> list[str]:
    """Write ``jobs/<tag>.json``; the agent's argv, its summary going to
    ``jobs/<tag>.summary.json``."""
    path = bench.root / "jobs" / f"{tag}.json"
    path.write_bytes(orjson.dumps(job, option=orjson.OPT_INDENT_2))
    summary = path.with_suffix(".summary.json")
    return [sys.executable, "-m", "agent", "--job", str(path), "--summary", str(summary)]


def _agent_argv(
    bench: Bench, sc: Scenario, model: str, store: str, tag: str, replicas: int = 0
) -> list[str]:
    job = agent_job(bench, sc, model, store, tag)
    if replicas:
        replica_models(job, setup.free_port_block(replicas) + 1, replicas)
    return write_job(bench, tag, job)


def _ideal_argv(bench: Bench, sc: Scenario, model: str, store: str, tag: str) -> list[str]:
    a = bench.args
    return [
        sys.executable, "-m", "bench.ideal",
        "--input", bench.input_uri(f"{sc.name}-ideal" if sc.bad_every else sc.name, store),
        "--output", bench.output_uri(tag, store),
        "--model", bench.models[model].url, "--split-type", sc.split_type,
        "--batch-strategy", sc.strategy, "--payload-mb", str(a.payload_mb),
        "--concurrency", str(a.concurrency), "--content-type", sc.content_type,
        "--max-records", str(sc.max_records),
    ]  # fmt: skip


def _command(
    bench: Bench, sc: Scenario, model: str, store: str, pipeline: str, tag: str
) -> tuple[list[str], dict[str, str], Path]:
    """The argv, environment and working directory of one run."""
    if sc.replicas:  # the agent with sc.replicas replicas against the agent with one
        argv = _agent_argv(bench, sc, model, store, tag, sc.replicas if pipeline == "agent" else 1)
        pipeline = "agent"
    else:
        make = _agent_argv if pipeline == "agent" else _ideal_argv
        argv = make(bench, sc, model, store, tag)
    if bench.args.py_spy:
        profile = Path(bench.args.py_spy) / f"{tag}.txt"
        extra = shlex.split(bench.args.py_spy_args)
        rate = [] if {"-r", "--rate"} & set(extra) else ["-r", "200"]  # a rate given wins
        spy = ["py-spy", "record", *rate, "-f", "raw", "-o", str(profile)]
        argv = [*spy, *extra, "--", *argv]
    if pipeline == "agent":
        env, cwd = agent_env_cwd(bench)
    else:
        env, cwd = {**os.environ, **bench.s3_env}, setup.ROOT
    return argv, env, cwd


def agent_env_cwd(bench: Bench) -> tuple[dict[str, str], Path]:
    """The agent's environment (``--agent-env``) and working directory (``--agent-root``)."""
    env = {**os.environ, **bench.s3_env}
    env.update(item.split("=", 1) for item in bench.args.agent_env)
    # ``python -m agent`` imports from its working directory
    cwd = Path(bench.args.agent_root) if bench.args.agent_root else setup.ROOT
    return env, cwd


def is_shard(entry: dict[str, Any]) -> bool:
    """Whether a summary entry is a shard's (its output under the state prefix's shards/)."""
    return "/shards/" in str(entry.get("Output", ""))


def file_totals(summary: dict[str, Any]) -> dict[str, int]:
    """The totals of a summary's completed files, shard entries left out.

    With Agent.ShardSizeMB the summary lists each shard this instance did and, for a file
    it assembled, the file with its shards' totals summed; the head's totals add both.
    """
    files = [e for e in summary["Files"] if e["Status"] == "Completed" and not is_shard(e)]
    return {
        "FilesCompleted": len(files),
        **{key: sum(int(e.get(key, 0)) for e in files) for key in TOTALS},
    }


TOTALS = ("Records", "Requests", "InputBytes", "OutputBytes")


def _report(bench: Bench, pipeline: str, tag: str, stdout: Path) -> tuple[dict[str, Any], int]:
    """What the program said it did, and how many files it completed."""
    if pipeline == "agent":
        report = orjson.loads((bench.root / "jobs" / f"{tag}.summary.json").read_bytes())
        if any(is_shard(entry) for entry in report["Files"]):
            report.update(file_totals(report))
        return report, int(report["FilesCompleted"])
    lines = stdout.read_bytes().splitlines()  # py-spy, when used, writes here too
    report = orjson.loads(next(line for line in reversed(lines) if line.startswith(b"{")))
    return report, int(report["Files"])


def run_once(
    bench: Bench, sc: Scenario, model: str, store: str, pipeline: str, run: int
) -> Measure:
    """One run of one program; raises with the tail of its log if it failed."""
    tag = f"{sc.name}-{model}-{store}-{run}-{pipeline}"
    argv, env, cwd = _command(bench, sc, model, store, pipeline, tag)
    server = bench.models[model]
    server.reset()
    log, stdout = bench.root / "logs" / f"{tag}.log", bench.root / "logs" / f"{tag}.out"
    model_cpu, s3_cpu = setup.cpu_seconds_of(server.pid), setup.cpu_seconds_of(bench.s3_pid)
    code, wall, cpu, system = _spawn(argv, env, log, stdout, bench.args.timeout, cwd)
    model_cpu = setup.cpu_seconds_of(server.pid) - model_cpu
    s3_cpu = setup.cpu_seconds_of(bench.s3_pid) - s3_cpu
    stats = server.stats()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{pipeline} exited {code} in {tag}: {shlex.join(argv)}\n{tail}")
    report, files = _report(bench, "agent" if sc.replicas else pipeline, tag, stdout)
    written = bench.outputs(tag, store)
    if sc.replicas:  # the agent started its own models: the harness's saw nothing
        stats["invocations"] = report["Requests"]
    if written != files or stats["invocations"] != report["Requests"]:
        raise RuntimeError(
            f"{tag}: {written} outputs for {files} files, the model saw "
            f"{stats['invocations']} requests, the program reported {report['Requests']}"
        )
    bench.clean(tag, store)
    return Measure(
        pipeline=pipeline,
        # Replica rows compare the agent with itself: from the models' /ping on, so the
        # start-up of one or three model servers is left out of both.
        seconds=float(report["TransformSeconds" if sc.replicas else "Seconds"]),
        wall_seconds=wall,
        cpu_seconds=cpu,
        sys_seconds=system,
        files=files,
        requests=int(report["Requests"]),
        input_bytes=int(report["InputBytes"]),
        output_bytes=int(report["OutputBytes"]),
        peak_rss_bytes=int(report["PeakRSSBytes"]),
        model_busy_seconds=float(stats["busy_seconds"]),
        model_in_flight_seconds=float(stats["in_flight_seconds"]),
        model_cpu_seconds=model_cpu,
        s3_cpu_seconds=s3_cpu,
    )
