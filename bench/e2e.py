"""End-to-end: is the agent ever the bottleneck? ``python -m bench.e2e [--scale 0.05 --runs 1]``.

Starts SeaweedFS and two model servers (``bench.models``) on loopback, writes the inputs,
and runs every scenario with the agent (``bt-agent --job``) and with the ideal pipeline
(``bench.ideal``: the least work any agent must do), alternating, ``--runs`` times each;
tables show medians. Scenarios (sizes at ``--scale 1``; ``MaxConcurrentTransforms``
``--concurrency``, MaxPayloadInMB ``--payload-mb``):

  a  Line + SingleRecord, 200-byte records (``--a-records``)      requests/s
  b  Line + MultiRecord, 512 MiB of CSV, one short line per line   MB/s of input
  c  TFRecord + MultiRecord, 512 MiB, one short line per request   MB/s of input
  d  2,000 files of 10 KiB, Line + MultiRecord                     files/s (= requests/s)
  e  2 GiB and 1 GiB of CSV echoed back (instant model only)       peak RSS, flat?
  f  b with Agent.MaxRecordsPerRequest 1000 (the ideal caps too)   MB/s of input
  g  b with Agent.RequireLinePerRecord, AssembleWith Line          MB/s of input
  h  b with Agent.MaxFailedRecords -1: isolation on, no bad record MB/s of input
  i  h with 1 bad line in 10,000 (the model answers 400 to it)    MB/s of input
  j  b on 3 model replicas the agent starts (one request at a time  MB/s of input
     each, 100 ms per MiB), against the same agent on 1 replica
  k  b cut into about 8 shards (Agent.ShardSizeMB), one instance   MB/s of input
  m  b with /metrics served and pushed to a Pushgateway stand-in  MB/s of input
     every second (``Agent.MetricsPort``, ``MetricsPushgatewayUrl``)
  l  one 2 GiB CSV file (``--l-gib``) on 4 instances, shards of 64  wall seconds, speed-up,
     MiB (``--l-shard-mb``), each instance starting its own model   the assembly's seconds
     as in j, against the same job on 1 instance without shards

f, g, h and m measure features on the data path: read each against b's rows (the same input
with the feature off). i's agent isolates the bad lines; its ideal reads the same input
without them (it cannot survive a 400), and the extra requests the agent sent are printed
against the bound 2·k·log2(n) for k bad records among bodies of n. k sends at most one
request more per inner shard edge than the ideal (bodies end at shard edges; the output
bytes are the same). l (``bench/e2e_shards.py``) prints each run's shards per instance and
the assembly's seconds, and checks the four instances' ``.out`` against the one's.

Against the ``service`` model (2 ms + 20 ms per MiB, sleeping) the question is whether the
agent keeps the model busy: throughput ratio agent/ideal ≥ 0.95 (a-c), ≥ 0.9 (d).
Against the ``instant`` model it is CPU: the agent's CPU seconds (user + sys of its
process, from ``wait4``) per GiB and per 1,000 requests ≤ 1.5 × the ideal's. CPU figures
are net of each program's start-up CPU (imports, clients), measured per store on a
one-line input and printed. Throughput uses each program's own seconds, counted after its
imports. ``--local`` scenarios also run against the local file system (``file://`` in and
out), which shows what SeaweedFS costs and whether it, not the agent, sets the pace.
Every run is checked: one output per input, the requests the model saw, and the same
output bytes from both programs. ``--agent-root`` runs another (built) source tree's
agent, for before/after comparisons; ``--py-spy DIR`` profiles every run
(``python -m bench.pyspy_top`` summarises the files). See bench/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from bench import e2e_setup as setup
from bench.e2e_report import print_table
from bench.e2e_run import (
    BUCKET,
    PIPELINES,
    Bench,
    Measure,
    Row,
    Scenario,
    run_once,
    shard_size_mb,
)
from bench.e2e_shards import ShardRow, print_l_table, run_l
from tests.support.pushgateway import PushgatewayStandIn

MIB, GIB = 1 << 20, 1 << 30
BAD_EVERY = 10_000  # scenario i: one bad line in this many


SCENARIOS = (
    Scenario("a", "a", "Line + SingleRecord, 200-byte records", "Line", "SingleRecord",
             "text/csv", "req/s", 0.95, ("service", "instant")),
    Scenario("b", "b", "Line + MultiRecord, CSV, one short line per input line", "Line",
             "MultiRecord", "text/csv", "MB/s", 0.95, ("service", "instant")),
    Scenario("c", "c", "TFRecord + MultiRecord, one short line per request", "TFRecord",
             "MultiRecord", "application/x-tfrecord", "MB/s", 0.95, ("service", "instant")),
    Scenario("d", "d", "small files of 10 KiB, Line + MultiRecord", "Line", "MultiRecord",
             "text/plain", "files/s", 0.9, ("service", "instant")),
    Scenario("e1", "e", "1x: CSV echoed back, memory ceiling", "Line", "MultiRecord",
             "application/octet-stream", "MB/s", 0.0, ("instant",)),
    Scenario("e2", "e", "2x: CSV echoed back, memory ceiling", "Line", "MultiRecord",
             "application/octet-stream", "MB/s", 0.0, ("instant",)),
    # Features on the data path, each on scenario b's input: compare with b's rows (off).
    Scenario("f", "f", "b with Agent.MaxRecordsPerRequest 1000 (both programs cap)", "Line",
             "MultiRecord", "text/csv", "MB/s", 0.95, ("service", "instant"), max_records=1000),
    Scenario("g", "g", "b with Agent.RequireLinePerRecord (AssembleWith Line)", "Line",
             "MultiRecord", "text/csv", "MB/s", 0.95, ("service", "instant"),
             agent_fields=(("RequireLinePerRecord", True),), assemble_with="Line"),
    Scenario("h", "h", "b with Agent.MaxFailedRecords -1 (isolation on, no bad record)", "Line",
             "MultiRecord", "text/csv", "MB/s", 0.95, ("service", "instant"),
             agent_fields=(("MaxFailedRecords", -1),)),
    Scenario("i", "i", "h with 1 bad line in 10,000 (400 from the model; the ideal reads "
             "them good)", "Line", "MultiRecord", "text/csv", "MB/s", 0.0, ("service", "instant"),
             agent_fields=(("MaxFailedRecords", -1),), bad_every=BAD_EVERY),
    Scenario("j", "j", "b on 3 replicas (Agent.ModelReplicas) against 1 replica (the 'ideal' "
             "column)", "Line", "MultiRecord", "text/csv", "MB/s", 2.7, ("service",),
             replicas=3),
    Scenario("k", "k", "b cut into about 8 shards (Agent.ShardSizeMB) on one instance",
             "Line", "MultiRecord", "text/csv", "MB/s", 0.95, ("service", "instant"),
             shard_parts=8),
    Scenario("m", "m", "b with /metrics served and pushed every second (Agent.MetricsPort, "
             "MetricsPushgatewayUrl)", "Line", "MultiRecord", "text/csv", "MB/s", 0.95,
             ("service", "instant"), metrics=True),
    Scenario("l", "l", "one big file on 4 instances with shards, each with its own model, "
             "against 1 instance without (the 'ideal' column)", "Line", "MultiRecord",
             "text/csv", "wall s", 3.0, ("service",)),
)  # fmt: skip


# ----------------------------------------------------------------------------- inputs


def prepare(bench: Bench, scenario: Scenario, stores: set[str]) -> None:
    """Write the scenario's inputs to S3 and (for local runs) to the file system."""
    scale, a = bench.args.scale, bench.args
    local = bench.root / "data" / scenario.name / "in"
    if scenario.name == "d":
        count = max(8, round(a.d_files * scale))
        setup.upload_small_files(bench.s3, BUCKET, "d/in/", count, a.d_file_bytes)
        if "local" in stores:
            setup.write_small_files(local, count, a.d_file_bytes)
        return
    if scenario.name == "a":
        data = setup.line_records(max(100, round(a.a_records * scale)), 200)
    elif scenario.name == "c":
        data = setup.tfrecord(int(a.mib * MIB * scale))
    elif scenario.name == "l":
        data = setup.csv_data(int(a.l_gib * GIB * scale))
    elif scenario.name in ("e1", "e2"):
        data = setup.csv_data(int(a.e_gib * GIB * scale * (1 if scenario.name == "e1" else 2)))
    else:
        data = setup.csv_data(int(a.mib * MIB * scale))
    if scenario.bad_every:  # the ideal reads the input without the bad lines
        data.upload(bench.s3, BUCKET, f"{scenario.name}-ideal/in/input.bin")
        data = setup.csv_data(int(a.mib * MIB * scale), bad_every=scenario.bad_every)
    data.upload(bench.s3, BUCKET, f"{scenario.name}/in/input.bin")
    bench.input_bytes[scenario.name] = data.size
    if "local" in stores:
        data.write(local / "input.bin")


# ----------------------------------------------------------------------------- runs


def measure_startup(bench: Bench, stores: set[str]) -> None:
    """Each program's CPU on a one-line input: what it costs before any data flows."""
    sc = Scenario("z", "z", "start-up", "Line", "MultiRecord", "text/csv", "", 0, ())
    bench.s3.put_object(Bucket=BUCKET, Key="z/in/one.csv", Body=b"1,2,3\n")
    (bench.root / "data" / "z" / "in").mkdir(parents=True, exist_ok=True)
    (bench.root / "data" / "z" / "in" / "one.csv").write_bytes(b"1,2,3\n")
    runs = max(1, min(bench.args.runs, 3))
    for store in sorted(stores):
        for pipeline in PIPELINES:
            cpu = [
                run_once(bench, sc, "instant", store, pipeline, i).cpu_seconds for i in range(runs)
            ]
            bench.startup_cpu[f"{pipeline}-{store}"] = statistics.median(cpu)


def run_row(bench: Bench, sc: Scenario, model: str, store: str) -> Row:
    row = Row(sc.name, model, store)
    runs = bench.args.e_runs if sc.group == "e" else bench.args.runs
    for run in range(runs):
        order = PIPELINES if run % 2 == 0 else PIPELINES[::-1]
        for pipeline in order:
            measure = run_once(bench, sc, model, store, pipeline, run)
            row.runs[pipeline].append(measure)
            if bench.args.verbose:
                print(f"  {sc.name} {model} {store} run {run} {pipeline}: {measure}", flush=True)
        agent, ideal = row.runs["agent"][-1], row.runs["ideal"][-1]
        if sc.bad_every:
            _isolation_cost(bench, sc, agent, ideal)
        elif sc.shard_parts:
            _shard_requests(bench, sc, model, store, run, agent, ideal)
        elif (agent.output_bytes, agent.requests) != (ideal.output_bytes, ideal.requests):
            raise RuntimeError(
                f"{sc.name} {model} {store} run {run}: the agent wrote {agent.output_bytes} "
                f"bytes in {agent.requests} requests, the ideal pipeline {ideal.output_bytes} "
                f"in {ideal.requests}: they did not do the same work"
            )
    return row


def _shard_requests(
    bench: Bench, sc: Scenario, model: str, store: str, run: int, agent: Measure, ideal: Measure
) -> None:
    """Check a sharded run against the ideal's and print the requests shard edges cost.

    Bodies end at shard edges (README "Shards of one big file"), so each shard but the last
    may add one request; the output bytes must be the same.
    """
    size = bench.input_bytes[sc.name]
    shard_bytes = shard_size_mb(size, sc.shard_parts) * MIB
    shards = -(-size // shard_bytes)
    extra = agent.requests - ideal.requests
    if agent.output_bytes != ideal.output_bytes or not 0 <= extra < shards:
        raise RuntimeError(
            f"{sc.name} {model} {store} run {run}: the agent wrote {agent.output_bytes} bytes "
            f"in {agent.requests} requests over {shards} shards, the ideal pipeline "
            f"{ideal.output_bytes} in {ideal.requests}: they did not do the same work"
        )
    print(
        f"  {sc.name} {model} {store} run {run}: {shards} shards of {shard_bytes // MIB} MiB; "
        f"the agent sent {agent.requests} requests, the ideal {ideal.requests}: {extra:+d} "
        f"(at most {shards - 1}, one per inner shard edge)",
        flush=True,
    )


def _isolation_cost(bench: Bench, sc: Scenario, agent: Measure, ideal: Measure) -> None:
    """Print the requests isolating the bad lines took against 2·k·log2(n)."""
    lines = agent.input_bytes // setup.CSV_LINE_BYTES
    bad = lines // sc.bad_every
    per_body = bench.args.payload_mb * MIB // setup.CSV_LINE_BYTES
    bound = 2 * bad * math.log2(per_body)
    extra = agent.requests - ideal.requests
    print(
        f"  {sc.name}: {bad} bad of {lines} lines; the agent sent {agent.requests} requests, "
        f"the ideal {ideal.requests}: {extra} more, against 2·k·log2(n) = {bound:.0f} "
        f"(n = {per_body} records a body) -> {'within' if extra <= bound else 'OVER'}",
        flush=True,
    )


# ----------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--scale", type=float, default=1.0, help="multiplies every input size (smoke: 0.05)")
    add("--runs", type=int, default=5, help="runs per program and row; tables show medians")
    add("--only", default="a,b,c,d,e,f,g,h,i,j,k,l,m", help="scenarios to run, e.g. a,b")
    add("--models", default="service,instant", help="model servers to run against")
    add("--local", default="b,c,d", help="scenarios also run against local files ('' for none)")
    add("--concurrency", type=int, default=8, help="MaxConcurrentTransforms")
    add("--payload-mb", type=int, default=6, help="MaxPayloadInMB")
    add("--a-records", type=int, default=50_000, help="records of scenario a")
    add("--mib", type=int, default=512, help="MiB of input of scenarios b and c")
    add("--d-files", type=int, default=2000, help="files of scenario d")
    add("--d-file-bytes", type=int, default=10 * 1024, help="bytes per file of scenario d")
    add("--e-gib", type=float, default=1.0, help="GiB of the smaller input of scenario e")
    add("--e-runs", type=int, default=1, help="runs of scenario e (memory, not speed)")
    add("--l-gib", type=float, default=2.0, help="GiB of scenario l's one file")
    add("--l-shard-mb", type=int, default=64, help="ShardSizeMB of scenario l (>= 16 shards)")
    add("--l-runs", type=int, default=1, help="runs of scenario l (about 5 minutes each)")
    add("--model-args", default="", help="extra flags for both model servers")
    add("--timeout", type=float, default=3600.0, help="seconds one run may take")
    add("--json", metavar="FILE", help="write every measurement to FILE")
    add("--py-spy", metavar="DIR", help="profile every run with py-spy (CPU figures are off)")
    add("--py-spy-args", default="", help="more py-spy flags, e.g. '--native'")
    add("--agent-root", metavar="DIR", help="run the agent of another source tree (built)")
    add("--agent-env", action="append", default=[], metavar="NAME=VALUE", help="for the agent")
    add(
        "--keep", metavar="DIR", help="work in DIR; keep its jobs, summaries, logs and local inputs"
    )
    add("-v", "--verbose", action="store_true", help="print every run")
    return parser


def main() -> int:
    args = _parser().parse_args()
    wanted = set(args.only.split(","))
    scenarios = [sc for sc in SCENARIOS if sc.group in wanted]
    models = [m for m in args.models.split(",") if m]
    local = set(filter(None, args.local.split(",")))
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bt-bench-e2e-"))
    for sub in ("jobs", "logs", "data", "out"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    s3_server = setup.SeaweedFS(scratch / "seaweedfs")
    servers: dict[str, setup.BenchModel] = {}
    pushgateway = PushgatewayStandIn()
    began = time.monotonic()
    try:
        s3_server.start()
        for kind in sorted({*models, "instant"}):  # instant: start-up and scenario e
            extra = shlex.split(args.model_args)
            servers[kind] = setup.BenchModel(kind, scratch / f"model-{kind}.log", *extra)
            servers[kind].start()
        s3 = s3_server.sync_client()
        s3.create_bucket(Bucket=BUCKET)
        bench = Bench(args, scratch, s3, s3_server.env(), s3_server.pid, servers)
        if "m" in wanted:
            pushgateway.start()
            bench.pushgateway = pushgateway.url
        print(
            f"bench.e2e: scale {args.scale:g}, {args.runs} runs, MaxConcurrentTransforms "
            f"{args.concurrency}, MaxPayloadInMB {args.payload_mb}, {os.cpu_count()} CPUs, "
            f"work dir {scratch}",
            flush=True,
        )
        measure_startup(bench, {"s3", "local"} if local & wanted else {"s3"})
        print(
            "start-up CPU s (one-line input, subtracted below): "
            + ", ".join(f"{p} {s:.2f}" for p, s in bench.startup_cpu.items()),
            flush=True,
        )
        rows: list[Row] = []
        shard_rows: list[ShardRow] = []
        for group in sorted({sc.group for sc in scenarios}):
            members = [sc for sc in scenarios if sc.group == group]
            if group == "l":  # four instances against one: a table of its own
                prepare(bench, members[0], {"s3"})
                shard_rows.append(run_l(bench, members[0]))
                print_l_table(members[0], shard_rows[-1])
                setup.delete_prefix(s3, BUCKET, "l/in/")
                continue
            group_rows: list[Row] = []
            for sc in members:
                stores = ["s3", "local"] if sc.group in local else ["s3"]
                prepare(bench, sc, set(stores))
                for model in (m for m in models if m in sc.models):
                    for store in stores:
                        group_rows.append(run_row(bench, sc, model, store))
                setup.delete_prefix(s3, BUCKET, f"{sc.name}/in/")
                setup.delete_prefix(s3, BUCKET, f"{sc.name}-ideal/in/")
                if not args.keep:  # kept: the local-store jobs can be run again by hand
                    shutil.rmtree(scratch / "data" / sc.name, ignore_errors=True)
            print_table(members, group_rows, bench)
            rows += group_rows
        if args.json:
            report = {
                "args": vars(args),
                "startup_cpu_seconds": bench.startup_cpu,
                "rows": [asdict(row) for row in rows],
                "shard_rows": [asdict(row) for row in shard_rows],
            }
            Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"bench.e2e done in {time.monotonic() - began:.0f} s")
    finally:
        for server in servers.values():
            server.stop()
        if bench_pushed := pushgateway.pushes:
            print(f"the Pushgateway stand-in took {len(bench_pushed)} pushes")
        if pushgateway.port:
            pushgateway.stop()
        s3_server.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
