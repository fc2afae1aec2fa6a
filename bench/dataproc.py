"""DataProcessing throughput: ``python -m bench.dataproc [--mib 32] [--runs 5]``.

Times the DataProcessing stage alone, on data held in memory, for each case:

* ``input``: ``RecordBatcher`` over 1 MiB chunks — cut lines, InputFilter, pack bodies
  under a 6 MiB bound;
* ``output``: ``RecordProcessor.assemble`` over every batch — split the model's answer,
  JoinSource, OutputFilter — with answers (one short line per record) made beforehand;
* ``stage``: both, the figure that matters.

Baselines measured in the same run on the same data: Python's ``csv`` module doing the
same per row (InputFilter written out, then the join and the OutputFilter written out),
and Python's ``json`` module likewise for JSON Lines. Prints the median of the runs;
MB/s counts 10^6 input bytes per second.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.dataproc import IMPLEMENTATION, Batch, RecordBatcher, RecordProcessor, parse_path
from agent.job import Plan

MiB = 1 << 20
BOUND = 6 * MiB
CHUNK = MiB


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    processor: RecordProcessor
    baseline: Callable[[bytes, list[bytes]], int] | None


def csv_rows(size: int, seed: int, quoted: float) -> bytes:
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size:
        fields = [f"id-{len(lines)}"] + [f"{rng.random():.6f}" for _ in range(19)]
        if rng.random() < quoted:
            fields[3] = '"Smith, ""J"""'
        line = ",".join(fields) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def json_lines(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    while total < size:
        features = [round(rng.random(), 6) for _ in range(20)]
        line = json.dumps({"id": f"r-{len(lines)}", "features": features}).encode() + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def make(lines: bool, fmt_csv: bool, input_filter: str, output_filter: str) -> RecordProcessor:
    plan = Plan(lines, fmt_csv, fmt_csv, parse_path(input_filter), parse_path(output_filter), True)
    return RecordProcessor(plan)


# ----------------------------------------------------------------------------- baselines


def csv_baseline(data: bytes, answers: list[bytes]) -> int:
    """Python's csv module: $[1:] written for the model, then input + answer, $[0,-1]."""
    text = data.decode()
    sent, out = io.StringIO(), io.StringIO()
    send, keep = csv.writer(sent, lineterminator="\n"), csv.writer(out, lineterminator="\n")
    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        send.writerow(row[1:])
    predictions = csv.reader(io.StringIO(b"".join(answers).decode()))
    for row, answer in zip(rows, predictions, strict=True):
        joined = row + answer
        keep.writerow([joined[0], joined[-1]])
    return len(sent.getvalue()) + len(out.getvalue())


def json_baseline(data: bytes, answers: list[bytes]) -> int:
    """Python's json module: $.features sent, then SageMakerOutput joined, id kept."""
    total = 0
    records = [json.loads(line) for line in data.splitlines()]
    for record in records:
        total += len(json.dumps(record["features"], separators=(",", ":")))
    outputs = [json.loads(line) for line in b"".join(answers).splitlines()]
    for record, output in zip(records, outputs, strict=True):
        record["SageMakerOutput"] = output
        kept = {"id": record["id"], "SageMakerOutput": output}
        total += len(json.dumps(kept, separators=(",", ":")))
    return total


# ----------------------------------------------------------------------------- timing


def batches_of(case: Case) -> list[Batch]:
    batcher = RecordBatcher(case.processor, "MultiRecord", BOUND)
    out: list[Batch] = []
    data = case.data
    for start in range(0, len(data), CHUNK):
        out += batcher.feed(data[start : start + CHUNK])
    return out + batcher.finish()


def answers_for(case: Case, batches: list[Batch]) -> list[bytes]:
    line = b"0.731\n" if case.processor.plan.output_csv else b'{"score":0.731}\n'
    return [line * batch.records for batch in batches]


def assemble_all(case: Case, batches: list[Batch], answers: list[bytes]) -> int:
    total = 0
    for batch, answer in zip(batches, answers, strict=True):
        what = f"bench bytes [{batch.start}, {batch.end})"
        total += len(case.processor.assemble(batch.inputs, answer, what=what, start=batch.start))
    return total


def timed(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def report(case: Case, runs: int) -> None:
    batches = batches_of(case)
    answers = answers_for(case, batches)
    size = len(case.data) / 1e6
    t_in = timed(lambda: batches_of(case), runs)
    t_out = timed(lambda: assemble_all(case, batches, answers), runs)
    line = (
        f"{case.name:<44} input {size / t_in:7.0f} MB/s   output {size / t_out:7.0f} MB/s"
        f"   stage {size / (t_in + t_out):7.0f} MB/s"
    )
    if case.baseline is not None:
        base = timed(lambda: case.baseline(case.data, answers), runs)  # type: ignore[misc]
        line += f"   baseline {size / base:5.0f} MB/s   ×{base / (t_in + t_out):.1f}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataproc", description=__doc__)
    parser.add_argument("--mib", type=int, default=32, help="input size per case (MiB)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure")
    args = parser.parse_args(argv)
    size = args.mib * MiB
    plain, quoted, lines = csv_rows(size, 1, 0.0), csv_rows(size, 2, 0.1), json_lines(size, 3)
    csv_filters = make(True, True, "$[1:]", "$[0,-1]")
    cases = [
        Case("csv $[1:] + join + $[0,-1]", plain, csv_filters, csv_baseline),
        Case("csv, 10% rows quoted, same filters", quoted, csv_filters, csv_baseline),
        Case("csv join only ($, Input, $)", plain, make(True, True, "$", "$"), None),
        Case(
            "jsonl $.features + join + ['id','SageMakerOutput']",
            lines,
            make(True, False, "$.features", "$['id','SageMakerOutput']"),
            json_baseline,
        ),
    ]  # fmt: skip
    print(
        f"{args.mib} MiB per case, median of {args.runs} runs, CSV rows {IMPLEMENTATION}; "
        "×: stage speed over baseline"
    )
    for case in cases:
        report(case, args.runs)


if __name__ == "__main__":
    main()
