"""The tables ``bench.e2e`` prints: medians per row, ratios, and the verdict against the targets.

Throughput: requests/s (a), MB/s of input (b, c, e; MB = 10^6 bytes), files/s (d). CPU:
user + sys seconds of the program's process net of its start-up CPU, per GiB of input and
per 1,000 requests. ``load``: the mean number of requests in progress at the model during
the program's seconds over MaxConcurrentTransforms (1.0 = every slot busy all the time:
the program kept the model saturated). ``S3 CPU``:
seconds SeaweedFS spent during the run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.e2e_run import Bench, Measure, Row, Scenario

MIB, GIB = 1 << 20, 1 << 30
CPU_TARGET = 1.5  # the agent's CPU per request and per GiB, at most this times the ideal's


def throughput(unit: str, m: Measure) -> float:
    seconds = max(m.seconds, 1e-9)
    if unit == "req/s":
        return m.requests / seconds
    if unit == "files/s":
        return m.files / seconds
    return m.input_bytes / 1e6 / seconds


def _median(runs: Sequence[Measure], value: Callable[[Measure], float]) -> float:
    return statistics.median(value(m) for m in runs)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _num(value: float, width: int) -> str:
    """``value`` right-aligned in ``width`` characters, with as many decimals as fit."""
    for decimals in (3, 2, 1, 0):
        text = f"{value:.{decimals}f}"
        if len(text) < width and (decimals == 0 or abs(value) < 10 ** (width - decimals - 3)):
            return text.rjust(width)
    return f"{value:.0f}".rjust(width)


def memory_bound(bench: Bench) -> float:
    """Scenario e's ceiling (bench/README.md): 200 MB + 3 × MaxConcurrentTransforms × MaxPayload."""
    args = bench.args
    return 200e6 + 3 * int(args.concurrency) * int(args.payload_mb) * MIB


@dataclass(frozen=True)
class Summary:
    """The medians of one row, for one program."""

    throughput: float
    cpu_per_gib: float  # net of start-up
    cpu_per_1k_requests: float  # net of start-up
    busy: float  # the service model's occupancy: 1.0 = every slot busy all the time
    in_flight: float  # mean requests in progress at the model over MaxConcurrentTransforms
    s3_cpu_seconds: float
    peak_rss_bytes: int  # the largest over the runs
    input_bytes: float
    requests_per_second: float


def summarize(runs: Sequence[Measure], unit: str, startup_cpu: float, slots: int) -> Summary:
    def net(m: Measure) -> float:
        return max(0.0, m.cpu_seconds - startup_cpu)

    return Summary(
        throughput=_median(runs, lambda m: throughput(unit, m)),
        cpu_per_gib=_median(runs, lambda m: net(m) / max(m.input_bytes / GIB, 1e-12)),
        cpu_per_1k_requests=_median(runs, lambda m: net(m) / max(m.requests, 1) * 1000),
        busy=_median(runs, lambda m: m.model_busy_seconds / (slots * max(m.seconds, 1e-9))),
        in_flight=_median(
            runs, lambda m: m.model_in_flight_seconds / (slots * max(m.seconds, 1e-9))
        ),
        s3_cpu_seconds=_median(runs, lambda m: m.s3_cpu_seconds),
        peak_rss_bytes=max(m.peak_rss_bytes for m in runs),
        input_bytes=_median(runs, lambda m: m.input_bytes),
        requests_per_second=_median(runs, lambda m: throughput("req/s", m)),
    )


def verdict(sc: Scenario, model: str, a: Summary, i: Summary, bound: float) -> str:
    """How the row stands against the issue's targets."""
    if sc.group == "e":
        return f"RSS {'ok' if a.peak_rss_bytes <= bound else 'OVER'} (bound {bound / 1e6:.0f} MB)"
    if model == "service":
        return "ok" if _ratio(a.throughput, i.throughput) >= sc.target else f"BELOW {sc.target:g}"
    if min(a.cpu_per_gib, i.cpu_per_gib) <= 0:
        return "CPU n/a: too small to measure past start-up"
    worst = max(
        _ratio(a.cpu_per_gib, i.cpu_per_gib),
        _ratio(a.cpu_per_1k_requests, i.cpu_per_1k_requests),
    )
    return "ok" if worst <= CPU_TARGET else f"CPU OVER {CPU_TARGET:g}x"


HEAD = (
    f"{'input':>9} {'model':<8}{'store':<6}| {'throughput':<10}{'agent':>8}{'ideal':>8}"
    f"{'ratio':>6} | {'CPU s/GiB':<9}{'agent':>8}{'ideal':>8}{'ratio':>6} | "
    f"{'s/1k req':<8}{'agent':>8}{'ideal':>8}{'ratio':>6} | {'load':<4}{'agent':>6}"
    f"{'ideal':>6} | {'RSS MB':>6} | {'S3 CPU s':<8}{'agent':>6}{'ideal':>6} | verdict"
)


def print_table(members: list[Scenario], rows: list[Row], bench: Bench) -> None:
    """One table: a line per (scenario, model, store), medians of the runs."""
    if not rows:
        return
    first = members[0]
    by_name = {sc.name: sc for sc in members}
    runs = len(rows[0].runs["agent"])
    title = first.title if first.group != "e" else "CSV echoed back: the memory ceiling"
    print(f"\n({first.group}) {title}; {first.unit}; median of {runs} run(s)")
    print(HEAD)
    print("-" * len(HEAD))
    slots, bound = bench.args.concurrency, memory_bound(bench)
    for row in rows:
        sc = by_name[row.scenario]
        a, i = (
            summarize(row.runs[p], sc.unit, bench.startup_cpu.get(f"{p}-{row.store}", 0.0), slots)
            for p in ("agent", "ideal")
        )
        busy = f"{a.in_flight:6.2f}{i.in_flight:6.2f}"
        print(
            f"{_size(a.input_bytes):>9} {row.model:<8}{row.store:<6}| {sc.unit:<10}"
            f"{_num(a.throughput, 8)}{_num(i.throughput, 8)}"
            f"{_ratio(a.throughput, i.throughput):6.2f} | {'':<9}"
            f"{_num(a.cpu_per_gib, 8)}{_num(i.cpu_per_gib, 8)}"
            f"{_ratio(a.cpu_per_gib, i.cpu_per_gib):6.2f} | {'':<8}"
            f"{_num(a.cpu_per_1k_requests, 8)}{_num(i.cpu_per_1k_requests, 8)}"
            f"{_ratio(a.cpu_per_1k_requests, i.cpu_per_1k_requests):6.2f} | {'':<4}{busy} | "
            f"{a.peak_rss_bytes / 1e6:6.0f} | {'':<8}{a.s3_cpu_seconds:6.1f}{i.s3_cpu_seconds:6.1f}"
            f" | {verdict(sc, row.model, a, i, bound)}"
        )
        if sc.unit == "files/s":
            print(
                f"{'':>24}requests/s: agent {a.requests_per_second:.1f}, "
                f"ideal {i.requests_per_second:.1f}"
            )
    if first.group == "e" and len(rows) >= 2:
        peaks = [max(m.peak_rss_bytes for m in row.runs["agent"]) for row in rows]
        print(f"agent peak RSS grows {(peaks[-1] - peaks[0]) / 1e6:+.0f} MB as the input doubles")


def _size(nbytes: float) -> str:
    if nbytes >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / MIB:.1f} MiB"
