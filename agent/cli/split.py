"""``bt-agent split``: how a local file would be cut into request bodies (README, Command line).

The file is streamed through the same splitter the data plane uses, decompressed on the
fly for ``Gzip`` (concatenated members too), so its memory is the bound plus one chunk.
With an output directory each body is written as ``000000.bin``, ``000001.bin``, ...
byte for byte as it would be sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from agent.codec.gzip import Gunzip, GzipError
from agent.errors import ExitCode
from agent.job import BATCH_STRATEGIES, MAX_PAYLOAD_MB, SPLIT_TYPES
from agent.split import (
    BodyLike,
    SplitError,
    make_splitter,
    max_payload_bytes,
)

READ_CHUNK_BYTES = 1 << 20
COMPRESSIONS = ("None", "Gzip")


def _gunzip(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress gzip members one after another, as the data plane does."""
    inflater = Gunzip(READ_CHUNK_BYTES)
    while chunk := raw.read(READ_CHUNK_BYTES):
        yield from inflater.feed(chunk)
    inflater.finish()


def _chunks(path: str, compression: str) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        if compression == "Gzip":
            yield from _gunzip(raw)
            return
        while chunk := raw.read(READ_CHUNK_BYTES):
            yield chunk


class _Tally:
    """Counts what the splitter produced and writes bodies out when asked to."""

    def __init__(self, output_dir: str | None) -> None:
        self.output_dir = output_dir
        self.records = 0
        self.bodies = 0
        self.body_bytes = 0
        self.smallest: int | None = None
        self.largest = 0
        self.input_bytes = 0
        self._size = 0
        self._file: BinaryIO | None = None

    def take(self, body: BodyLike) -> None:
        if body.first and self.output_dir is not None:
            name = os.path.join(self.output_dir, f"{self.bodies:06d}.bin")
            self._file = open(name, "xb")  # closed when the body's last part comes
        if self._file is not None:
            self._file.write(body.data)
        self._size += len(body.data)
        if body.last:
            self.records += body.records
            self.bodies += 1
            self.body_bytes += self._size
            self.smallest = self._size if self.smallest is None else min(self.smallest, self._size)
            self.largest = max(self.largest, self._size)
            self._size = 0
            if self._file is not None:
                self._file.close()
                self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _usage(
    path: str,
    split_type: str,
    batch_strategy: str,
    max_payload_mb: int,
    max_records: int | None,
    compression: str,
    output_dir: str | None,
) -> str | None:
    if split_type not in SPLIT_TYPES:
        return f"--split-type must be one of {', '.join(SPLIT_TYPES)}, not {split_type!r}"
    if batch_strategy not in BATCH_STRATEGIES:
        return (
            f"--batch-strategy must be one of {', '.join(BATCH_STRATEGIES)}, not {batch_strategy!r}"
        )
    if type(max_payload_mb) is not int or not 0 <= max_payload_mb <= MAX_PAYLOAD_MB:
        allowed = f"an integer from 0 to {MAX_PAYLOAD_MB}"
        return f"--max-payload-mb must be {allowed}, not {max_payload_mb!r}"
    if max_records is not None and (type(max_records) is not int or max_records < 1):
        return f"--max-records-per-request must be an integer of 1 or more, not {max_records!r}"
    if compression not in COMPRESSIONS:
        return f"--compression must be None or Gzip, not {compression!r}"
    if not os.path.isfile(path):
        return f"{path}: no such file"
    if output_dir is not None and os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            return f"--output-dir {output_dir}: exists and is not a directory"
        if os.listdir(output_dir):
            return f"--output-dir {output_dir}: is not empty; give a new or empty directory"
    return None


def run_split(
    path: str,
    *,
    split_type: str,
    batch_strategy: str,
    max_payload_mb: int,
    max_records: int | None = None,
    compression: str = "None",
    output_dir: str | None = None,
    out: TextIO,
) -> int:
    """Split ``path`` as a transform job would and print what it would send.

    Returns 0 when the whole file splits, 1 on a data error (printed with the file name
    and byte offset), 2 on a usage error.
    """
    problem = _usage(
        path, split_type, batch_strategy, max_payload_mb, max_records, compression, output_dir
    )
    if problem is not None:
        print(f"error: {problem}", file=out)
        return ExitCode.USAGE
    bound = max_payload_bytes(max_payload_mb)
    limit = f"bound {bound} bytes" if bound else "no bound: bodies stream"
    cap = f" MaxRecordsPerRequest={max_records}" if max_records is not None else ""
    print(
        f"{path}: SplitType={split_type} BatchStrategy={batch_strategy} "
        f"MaxPayloadInMB={max_payload_mb} ({limit}){cap} CompressionType={compression}",
        file=out,
    )
    if output_dir is not None:
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as error:
            print(f"error: --output-dir {output_dir}: {error.strerror or error}", file=out)
            return ExitCode.USAGE
    splitter = make_splitter(split_type, batch_strategy, bound, max_records or 0)
    tally = _Tally(output_dir)
    try:
        for chunk in _chunks(path, compression):
            tally.input_bytes += len(chunk)
            for body in splitter.feed(chunk):
                tally.take(body)
        for body in splitter.finish():
            tally.take(body)
    except SplitError as error:
        where = " (offsets count uncompressed bytes)" if compression == "Gzip" else ""
        print(f"error: {error.in_file(path)}{where}", file=out)
        _summary(tally, out, partial=True)
        return error.exit_code
    except GzipError as error:
        print(f"error: {error.in_file(path)}", file=out)
        _summary(tally, out, partial=True)
        return error.exit_code
    except OSError as error:
        print(f"error: {path}: {error.strerror or error}", file=out)
        return ExitCode.FAILED
    finally:
        tally.close()
    _summary(tally, out, partial=False)
    return ExitCode.COMPLETED


def _summary(tally: _Tally, out: TextIO, *, partial: bool) -> None:
    head = "before the error: " if partial else ""
    print(f"{head}input {tally.input_bytes} bytes, {tally.records} records", file=out)
    sizes = ""
    if tally.bodies:
        sizes = f", {tally.body_bytes} bytes (smallest {tally.smallest}, largest {tally.largest})"
    print(f"{head}{tally.bodies} requests{sizes}", file=out)
    if tally.output_dir is not None and tally.bodies:
        last = f"{tally.bodies - 1:06d}.bin"
        print(f"wrote {tally.output_dir}/000000.bin .. {last}", file=out)
