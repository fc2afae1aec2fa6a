"""Splitter throughput: ``python -m bench.split [--mib 256] [--py-mib 8] [--runs 5]``.

For each format × batch strategy, feeds data held in memory through both twins in
chunks and times the whole pass (feed, finish, and a consumer that touches every body),
next to baselines measured in the same run on the same data: Python's ``for line in f``
with a ``bytes.join`` per body for Line, and the pure-Python twin for every format.
Prints the median of the runs. MB/s counts 10^6 input bytes per second. MultiRecord
rows (but None's) are run again with record boundaries on the bodies (``bounds=True``),
and the throughput with them over the throughput without, per twin, is printed as
``bounds on/off`` (the two passes timed in turn, so a busy machine slows both alike).
"""

from __future__ import annotations

import argparse
import functools
import io
import random
import statistics
import struct
import time
from collections.abc import Callable, Iterable
from types import ModuleType

from agent.codec import crc32c
from agent.split import _splitters_py

try:
    from agent.split import _splitters_c as native
except ImportError:  # pragma: no cover - not built
    native = None  # type: ignore[assignment]

MiB = 1 << 20
BOUND = 6 * MiB  # MaxPayloadInMB=6, SageMaker's default
LINE = 100  # bytes per line, newline included
PAYLOAD_MIN, PAYLOAD_MAX = 256, 2048  # TFRecord / RecordIO payload sizes, uniform


# ------------------------------------------------------------------------- data


def _pool(seed: int) -> bytes:
    return random.Random(seed).randbytes(4 * MiB)


def line_data(size: int) -> bytes:
    """``size`` bytes of 100-byte CSV-like lines."""
    text = bytes(random.Random(1).choice(b"0123456789abcdef,") for _ in range(4096))
    block = b"".join(text[i % 3000 : i % 3000 + LINE - 1] + b"\n" for i in range(MiB // LINE))
    return (block * (size // len(block) + 1))[: size - size % LINE]


def _payloads(size: int, seed: int) -> Iterable[bytes]:
    rng, pool, total = random.Random(seed), _pool(seed), 0
    while total < size:
        n = rng.randrange(PAYLOAD_MIN, PAYLOAD_MAX + 1)
        at = rng.randrange(0, len(pool) - n)
        total += n
        yield pool[at : at + n]


def tfrecord_data(size: int) -> bytes:
    frames = []
    for payload in _payloads(size, 2):
        head = struct.pack("<Q", len(payload))
        crcs = struct.pack("<I", crc32c.masked(head)), struct.pack("<I", crc32c.masked(payload))
        frames += [head, crcs[0], payload, crcs[1]]
    return b"".join(frames)


def recordio_data(size: int) -> bytes:
    frames = []
    for payload in _payloads(size, 3):
        # An aligned magic word would make dmlc split the record; random data rarely has one.
        frames += [
            struct.pack("<II", 0xCED7230A, len(payload)),
            payload,
            b"\0" * (-len(payload) % 4),
        ]
    return b"".join(frames)


DATA: dict[str, Callable[[int], bytes]] = {
    "Line": line_data,
    "TFRecord": tfrecord_data,
    "RecordIO": recordio_data,
    "None": line_data,
}


def chunked(data: bytes, chunk: int) -> list[bytes]:
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


# ------------------------------------------------------------------------- passes


def split_pass(
    module: ModuleType,
    kind: str,
    strategy: str,
    bound: int,
    chunks: list[bytes],
    bounds: bool = False,
) -> int:
    """Feed every chunk, touch every body; return the record count. ``bounds``: make the
    splitter with record boundaries on its bodies (``Body.bounds``)."""
    splitter = module.make_splitter(kind, strategy, bound, 0, bounds)
    records = 0
    for chunk in chunks:
        for body in splitter.feed(chunk):
            records += body.records
    for body in splitter.finish():
        records += body.records
    return records


def baseline_lines(data: bytes, single: bool, bound: int) -> int:
    """``for line in f``; MultiRecord joins lines into bodies of at most ``bound`` bytes."""
    records = 0
    if single:
        for _line in io.BytesIO(data):
            records += 1
        return records
    parts: list[bytes] = []
    size = 0
    for line in io.BytesIO(data):
        if size + len(line) > bound and parts:
            b"".join(parts)
            parts, size = [], 0
        parts.append(line)
        size += len(line)
        records += 1
    b"".join(parts)
    return records


def median_seconds(run: Callable[[], int], runs: int) -> tuple[float, int]:
    """Median wall time of ``runs`` timed passes, after one untimed pass that lets the
    allocator settle (glibc maps fresh 6 MiB bodies until its mmap threshold adapts)."""
    records = run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        records = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), records


def paired_median_seconds(
    first: Callable[[], int], second: Callable[[], int], runs: int
) -> tuple[tuple[float, int], tuple[float, int]]:
    """``median_seconds`` of two passes timed in turn (which goes first alternating), so
    that a shared machine's slow spells fall on both alike and their ratio holds."""
    records = [first(), second()]
    times: list[list[float]] = [[], []]
    for i in range(runs):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            records[which] = (first, second)[which]()
            times[which].append(time.perf_counter() - start)
    return (
        (statistics.median(times[0]), records[0]),
        (statistics.median(times[1]), records[1]),
    )


# ------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.split", description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="input per format, MiB")
    parser.add_argument("--py-mib", type=int, default=8, help="input for the pure twin, MiB")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is shown")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size fed, KiB")
    parser.add_argument("--only", nargs="*", default=list(DATA), help="formats to run")
    args = parser.parse_args(argv)
    print(
        f"split benchmark: {args.mib} MiB per format in memory ({args.py_mib} MiB for the pure"
        f" twin), {args.chunk_kib} KiB chunks, bound {BOUND >> 20} MiB (0 for None),"
        f" median of {args.runs} runs after one warm-up"
    )
    print(f"Line: {LINE}-byte lines; TFRecord/RecordIO payloads {PAYLOAD_MIN}-{PAYLOAD_MAX} bytes")
    print(f"native: {'built' if native else 'NOT BUILT'}; CRC-32C: {crc32c.implementation()}")
    header = f"{'format':9} {'strategy':13} {'implementation':22} {'MB/s':>9} {'Mrec/s':>8}"
    print(f"{header} {'vs base':>8}")
    print("-" * (len(header) + 9))
    for kind in args.only:
        _report(kind, args.mib * MiB, args.py_mib * MiB, args.chunk_kib * 1024, args.runs)
    return 0


def _report(kind: str, size: int, py_size: int, chunk: int, runs: int) -> None:
    data = DATA[kind](size)
    small = data[: _frame_boundary(kind, data, py_size)]  # whole frames for the pure twin
    chunks, small_chunks = chunked(data, chunk), chunked(small, chunk)
    bound = 0 if kind == "None" else BOUND
    for strategy in ("MultiRecord", "SingleRecord"):
        if kind == "None" and strategy == "SingleRecord":
            continue
        rows: list[tuple[str, float, int, int]] = []
        if kind == "Line":
            single = strategy == "SingleRecord"
            name = "for line in f" + ("" if single else " + join")
            run = functools.partial(baseline_lines, data, single, bound)
            rows.append((name, *median_seconds(run, runs), len(data)))
        # Record boundaries (Body.bounds) are kept on whole MultiRecord bodies only.
        with_bounds = strategy == "MultiRecord" and kind != "None"
        twins = [("pure twin", _splitters_py, small_chunks, len(small))]
        if native is not None:
            twins.append(("native", native, chunks, len(data)))
        for name, module, pieces, n in twins:
            run = functools.partial(split_pass, module, kind, strategy, bound, pieces)
            if not with_bounds:
                rows.append((name, *median_seconds(run, runs), n))
                continue
            run_on = functools.partial(split_pass, module, kind, strategy, bound, pieces, True)
            off, on = paired_median_seconds(run, run_on, runs)
            rows += [(name, *off, n), (f"{name}, bounds", *on, n)]
        base = rows[0][3] / rows[0][1]
        rates = {}
        for name, secs, recs, n in rows:
            rate = rates[name] = n / secs
            print(
                f"{kind:9} {strategy:13} {name:22} {rate / 1e6:9.1f} {recs / secs / 1e6:8.2f}"
                f" {rate / base:7.1f}x"
            )
        for name, *_ in twins if with_bounds else []:
            ratio = rates[f"{name}, bounds"] / rates[name]
            print(f"{kind:9} {strategy:13} {name + ': bounds on/off':22} {ratio:9.3f}")


def _frame_boundary(kind: str, data: bytes, limit: int) -> int:
    """The end of the last whole frame at or before ``limit`` (frames walked by header)."""
    if kind in ("None", "Line"):
        return min(limit, len(data) - len(data) % LINE)
    at = 0
    while at < len(data):
        if kind == "TFRecord":
            size = 16 + struct.unpack_from("<Q", data, at)[0]
        else:
            n = struct.unpack_from("<I", data, at + 4)[0] & ((1 << 29) - 1)
            size = 8 + n + (-n % 4)
        if at + size > limit:
            break
        at += size
    return at


if __name__ == "__main__":
    raise SystemExit(main())
