"""A seeded chaos soak: every fault bt-agent survives, at once, and a verdict on the outputs.

    python -m bench.soak [--seed N] [--scale ci|default|FACTOR] [--minutes M] [--work DIR]

One round: SeaweedFS (versioning on) holds the inputs of three jobs (``bench/soak_data.py``:
Line with CRLF and long lines, RecordIO multi-part records through a manifest, TFRecord in
gzip files, empty files, poisoned records, big files cut into shards). Phase 1 runs the
Line job on 3–4 instances in Lease mode; phase 2 the RecordIO and TFRecord jobs on 2 Static
instances each. Every instance starts 2 model replicas (``bench/soak_model.py``). During
each phase a schedule drawn from the seed (``bench/soak_faults.py``) injects model 500s,
resets, timeouts, slow answers and 413s, a replica SIGKILLed, SeaweedFS SIGKILLed and
restarted, an instance SIGKILLed and restarted, an instance paused past its lease's TTL and
a whole job stopped and resumed. Then ``bench/soak_check.py`` checks every output against
what the generated records demand. It prints the seed first, a table last, and exits 0
only when every check holds (1, naming what failed, otherwise).

``--minutes M`` repeats rounds, each with a seed drawn from the one before, until M minutes
have passed; the first failing round stops it. ``--corpus`` also replays the hostile-input
corpus (``bench/corpus_replay.py: replay_all``) on the round's SeaweedFS.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.soak_check import Verdict, rss_bound, verdict
from bench.soak_data import JobData, bind_bucket, make_jobs
from bench.soak_faults import KINDS, MODEL_KINDS, Fault, Injector, schedule
from bench.soak_run import Cluster, Env, Events, Settings
from tests.support.multirun import enable_versioning
from tests.support.runjob import put_objects
from tests.support.seaweedfs import SeaweedFS

SCALES = {
    # 3 Lease instances, small inputs, one fault of each kind per phase: under 2 minutes.
    "ci": Settings(
        lease_instances=3,
        static_instances=2,
        data_scale=0.25,
        lease_ttl=3,
        model_delay_ms=60,
        extra_faults=0,
        phase_limit_seconds=150,
    ),
    # 4 Lease instances, slower model answers, five more faults drawn per phase: a few minutes.
    "default": Settings(
        lease_instances=4,
        static_instances=2,
        data_scale=1.0,
        lease_ttl=6,
        model_delay_ms=150,
        extra_faults=5,
        phase_limit_seconds=600,
    ),
}
_OUTCOME = {"model_500": "500", "model_reset": "reset", "model_timeout": "timeout"}
_OUTCOME |= {"model_slow": "slow", "model_413": "413"}


def settings_of(scale: str) -> Settings:
    if scale in SCALES:
        return SCALES[scale]
    try:
        factor = float(scale)
    except ValueError:
        raise SystemExit(f"--scale {scale!r}: give ci, default or a number (1 = default)") from None
    if not 0 < factor <= 20:
        raise SystemExit(f"--scale {scale}: a factor above 0 and at most 20")
    small = factor < 0.5
    base = SCALES["ci" if small else "default"]
    return replace(
        base, data_scale=factor, phase_limit_seconds=base.phase_limit_seconds * max(1, factor)
    )


def run_phase(env: Env, clusters: list[Cluster], faults: list[Fault], events: Events, v: Verdict):
    """Start the clusters, fire the faults as progress reaches them, wait for the end."""
    for cluster in clusters:
        cluster.start()
    injector = Injector(env, clusters)
    events.read()
    base = events.good
    total = sum(f.records_good for c in clusters for f in _files(c.data)) or 1
    began = time.monotonic()
    pending = list(faults)
    try:
        while not all(cluster.finished() for cluster in clusters):
            events.read()
            injector.expire()
            if pending and (events.good - base) / total >= pending[0].at:
                injector.fire(pending.pop(0))
                continue
            if time.monotonic() - began > env.settings.phase_limit_seconds:
                v.fail(
                    f"phase of {', '.join(c.name for c in clusters)} still running after "
                    f"{env.settings.phase_limit_seconds:g} s: stopped"
                )
                break
            time.sleep(0.1)
    finally:
        injector.expire(everything=True)
        for cluster in clusters:
            cluster.stop_all()
    for fault in pending:
        injector.skipped[fault.kind] += 1
    injector.seconds = time.monotonic() - began
    return injector


class _Good:
    def __init__(self, count: int) -> None:
        self.records_good = count


def _files(data: JobData) -> list[_Good]:
    return [_Good(sum(not r.bad and r.number is not None for r in f.records)) for f in data.files]


def run_round(seed: int, settings: Settings, work: Path, corpus: bool) -> tuple[bool, str]:
    rng = random.Random(seed)
    seaweed = SeaweedFS(work / "s3")
    clusters: list[Cluster] = []
    v = Verdict()
    began = time.monotonic()
    seaweed.start()
    try:
        client = seaweed.sync_client()
        bucket = f"soak-{seed % 1_000_000:06d}"
        client.create_bucket(Bucket=bucket)
        enable_versioning(client, bucket)
        jobs = make_jobs(rng, settings.data_scale, settings.shard_mb)
        bind_bucket(jobs, bucket)
        for job in jobs:
            put_objects(client, bucket, job.objects())
        env = Env(seaweed, client, bucket, work, seed, settings)
        events = Events(env.events)
        lease, rec, tf = jobs
        name = f"soak-{seed}"
        phase1 = [Cluster(env, lease, settings.lease_instances, "Lease", f"{name}-lease")]
        phase2 = [
            Cluster(env, rec, settings.static_instances, "Static", f"{name}-rec"),
            Cluster(env, tf, settings.static_instances, "Static", f"{name}-tf"),
        ]
        clusters = phase1 + phase2
        injectors = []
        for phase, lease_mode in ((phase1, True), (phase2, False)):
            faults = schedule(rng, lease=lease_mode, extra=settings.extra_faults)
            injectors.append(run_phase(env, phase, faults, events, v))
        events.read()
        checked = verdict(client, bucket, clusters, settings)
        v.lost, v.duplicated = checked.lost, checked.duplicated
        v.reordered, v.partial = checked.reordered, checked.partial
        for problem in checked.problems:
            v.fail(problem)
        if corpus:
            _corpus(env, v)
        table = _table(
            seed, settings, jobs, clusters, injectors, events, v, time.monotonic() - began
        )
    finally:
        for cluster in clusters:
            cluster.stop_all()
        seaweed.stop(grace_seconds=0)
    return v.ok, table


def _corpus(env: Env, v: Verdict) -> None:
    """Replay the hostile-input corpus (bench/corpus/) on this round's SeaweedFS."""
    from bench import corpus_replay

    for result in corpus_replay.replay_all(env.seaweed, env.directory / "corpus"):
        print(f"corpus: {result.case_id}: {'holds' if result.ok else 'FAILS'}")
        if not result.ok:
            v.fail(f"corpus case {result.case_id} failed: {'; '.join(result.problems)}")


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def _table(seed, settings, jobs, clusters, injectors, events, v, seconds) -> str:  # noqa: ANN001
    logs = "".join(cluster.logs() for cluster in clusters)
    launches = [launch for cluster in clusters for launch in cluster.launches]
    rows = [f"soak seed {seed}: {seconds:.0f} s, scale {settings.data_scale:g}"]
    rows.append("faults injected (skipped: due after the work was done, or nothing to hit)")
    missing = []
    for kind in KINDS:
        if kind in MODEL_KINDS:
            n = events.outcomes[_OUTCOME[kind]]
        else:
            n = sum(i.done[kind] for i in injectors)
        skipped = sum(i.skipped[kind] for i in injectors)
        rows.append(f"  {kind:<16} {n:>6}" + (f" ({skipped})" if skipped else ""))
        if n == 0:
            missing.append(kind)
    files = sum(len(job.files) for job in jobs)
    records = sum(job.records for job in jobs)
    failed = sum(job.failed_records for job in jobs)
    peak = max(
        (
            max(la.peak_rss, (la.run.summary or {}).get("PeakRSSBytes", 0))
            for la in launches
            if la.run
        ),
        default=0,
    )
    retries = _count(r"model request for .* failed \(attempt", logs)
    s3_retries = _count(r"without progress\)", logs)
    rows += [
        f"files            {files:>8}  ({sum(len(c.data.files) for c in clusters[:1])} lease, "
        f"{sum(len(c.data.files) for c in clusters[1:])} static)",
        f"records          {records:>8}  ({failed} poisoned)",
        f"instance starts  {len(launches):>8}",
        f"requests         {events.requests:>8}",
        f"model retries    {retries:>8}",
        f"s3 retries       {s3_retries:>8}",
        f"takeovers        {_count(r'took the lease over from', logs):>8}",
        f"peak RSS         {peak / 2**20:>8.0f}  MiB (bound {rss_bound(settings) / 2**20:.0f})",
        f"verdict          {v.lost} lost / {v.duplicated} duplicated / {v.reordered} reordered"
        f" / {v.partial} partial",
    ]
    for number, injector in enumerate(injectors, start=1):
        rows.append(f"  phase {number} ({injector.seconds:.0f} s):")
        rows += [f"    {line}" for line in injector.log]
    if missing:
        rows.append(f"not injected this round: {', '.join(missing)}")
    rows.append("PASS" if v.ok else "FAIL:\n  " + "\n  ".join(v.problems))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--scale", default="default", help="ci, default, or a factor")
    parser.add_argument("--minutes", type=float, default=0, help="repeat rounds this long")
    parser.add_argument("--work", type=Path, default=None, help="keep the round's files here")
    parser.add_argument("--corpus", action="store_true", help="also replay bench/corpus/")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    settings = settings_of(args.scale)
    print(
        f"soak seed {seed} (rerun: python -m bench.soak --seed {seed} --scale {args.scale})",
        flush=True,
    )
    deadline = time.monotonic() + args.minutes * 60
    seeds = random.Random(seed)
    rounds = 0
    while True:
        work = args.work or Path(tempfile.mkdtemp(prefix="bt-soak-"))
        round_dir = work / f"round-{rounds}"
        round_dir.mkdir(parents=True, exist_ok=True)
        ok, table = run_round(seed, settings, round_dir, args.corpus)
        print(table, flush=True)
        rounds += 1
        if not ok:
            print(f"round {rounds} failed; its files are kept in {round_dir}", flush=True)
            return 1
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        if time.monotonic() >= deadline:
            break
        seed = seeds.randrange(1 << 31)
        print(f"next round: seed {seed}", flush=True)
    print(f"{rounds} round(s) passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
