"""``run_split``, the function behind ``bt-agent split``, on real local files."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from agent.cli.split import run_split
from tests.support.split import MAGIC_BYTES, rio_frame, rio_record, tf_frame

MiB = 1 << 20


def run(path: Path, **options: object) -> tuple[int, str]:
    out = io.StringIO()
    settings: dict[str, object] = {
        "split_type": "Line",
        "batch_strategy": "MultiRecord",
        "max_payload_mb": 1,
    }
    settings.update(options)
    code = run_split(str(path), out=out, **settings)  # type: ignore[arg-type]
    return code, out.getvalue()


def written(directory: Path) -> list[bytes]:
    return [(directory / name).read_bytes() for name in sorted(os.listdir(directory))]


def test_line_bodies_are_written_as_they_would_be_sent(tmp_path: Path) -> None:
    data = b"".join(b"%07d," % i + b"x" * 91 + b"\n" for i in range(25_000))  # 100-byte lines
    source = tmp_path / "data.csv"
    source.write_bytes(data)
    code, text = run(source, output_dir=str(tmp_path / "out"))
    assert code == 0, text
    bodies = written(tmp_path / "out")
    assert len(bodies) == 3 and b"".join(bodies) == data
    assert all(len(b) <= MiB and b.endswith(b"\n") for b in bodies)
    assert "input 2500000 bytes, 25000 records" in text
    sizes = f"smallest {len(bodies[-1])}, largest {MiB - MiB % 100}"
    assert f"3 requests, 2500000 bytes ({sizes})" in text
    assert "000000.bin .. 000002.bin" in text


def test_gzip_members_are_decompressed_as_one_stream(tmp_path: Path) -> None:
    lines = [b"row %d\n" % i for i in range(1000)]
    plain = b"".join(lines)
    packed = (
        gzip.compress(b"".join(lines[:400])) + b"\0" * 16 + gzip.compress(b"".join(lines[400:]))
    )
    source = tmp_path / "data.csv.gz"
    source.write_bytes(packed)
    code, text = run(
        source, compression="Gzip", batch_strategy="SingleRecord", output_dir=str(tmp_path / "o")
    )
    assert code == 0, text
    assert written(tmp_path / "o") == lines
    assert f"input {len(plain)} bytes, 1000 records" in text


def test_gzip_that_inflates_far_streams_in_bounded_pieces(tmp_path: Path) -> None:
    source = tmp_path / "zeros.gz"
    source.write_bytes(gzip.compress(b"\0" * (5 * MiB)))
    code, text = run(source, compression="Gzip", split_type="None", max_payload_mb=0)
    assert code == 0, text
    assert f"input {5 * MiB} bytes, 1 records" in text and "1 requests" in text


def test_an_empty_gzip_object_is_an_empty_input(tmp_path: Path) -> None:
    source = tmp_path / "empty.gz"
    source.write_bytes(b"")
    code, text = run(source, compression="Gzip")
    assert code == 0 and "0 records" in text and "0 requests" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (gzip.compress(b"a\n" * 100, mtime=0)[:-9], "the gzip input is truncated"),
        (b"definitely not gzip", "the input is not valid gzip near compressed byte 0"),
    ],
)
def test_broken_gzip_is_a_data_error(tmp_path: Path, content: bytes, message: str) -> None:
    source = tmp_path / "bad.gz"
    source.write_bytes(content)
    code, text = run(source, compression="Gzip")
    assert code == 1 and f"error: {source}: {message}" in text


def test_corrupt_records_fail_with_file_and_offset(tmp_path: Path) -> None:
    source = tmp_path / "data.tfrecord"
    good = tf_frame(b"first") + tf_frame(b"second")
    source.write_bytes(good + tf_frame(b"third")[:-1])
    code, text = run(source, split_type="TFRecord", batch_strategy="SingleRecord")
    assert code == 1
    assert f"error: {source}: TFRecord frame at byte {len(good)} is truncated" in text
    assert "before the error: input" in text


def test_recordio_single_record_bodies_are_payloads(tmp_path: Path) -> None:
    payload = b"abcd" + MAGIC_BYTES + b"efgh"
    source = tmp_path / "data.rec"
    source.write_bytes(rio_frame(b"one") + rio_record(payload))
    code, text = run(
        source, split_type="RecordIO", batch_strategy="SingleRecord", output_dir=str(tmp_path / "o")
    )
    assert code == 0, text
    assert written(tmp_path / "o") == [b"one", payload]


def test_unbounded_bodies_are_written_whole(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(3 * MiB + 5))
    code, text = run(source, split_type="None", max_payload_mb=0, output_dir=str(tmp_path / "o"))
    assert code == 0, text
    assert written(tmp_path / "o") == [source.read_bytes()]
    assert "no bound: bodies stream" in text


def test_record_over_the_bound_is_reported_with_both_sizes(tmp_path: Path) -> None:
    source = tmp_path / "wide.csv"
    source.write_bytes(b"short\n" + b"w" * (MiB + 1) + b"\n")
    code, text = run(source)
    assert code == 1
    assert f"{source}: the record at byte 6 is {MiB + 2} bytes, larger than the" in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split_type": "Lines"}, "--split-type must be one of None, Line, RecordIO, TFRecord"),
        ({"batch_strategy": "Multi"}, "--batch-strategy must be one of"),
        ({"max_payload_mb": 101}, "--max-payload-mb must be an integer from 0 to 100"),
        ({"compression": "Zstd"}, "--compression must be None or Gzip"),
    ],
)
def test_usage_errors(tmp_path: Path, options: dict[str, object], message: str) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"x\n")
    code, text = run(source, **options)
    assert code == 2 and text.startswith(f"error: {message}")


def test_missing_file_and_busy_output_directory(tmp_path: Path) -> None:
    assert run(tmp_path / "nope")[0] == 2
    source = tmp_path / "x"
    source.write_bytes(b"x\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "000000.bin").write_bytes(b"old")
    code, text = run(source, output_dir=str(busy))
    assert code == 2 and "is not empty" in text


def test_max_records_per_request_caps_each_body(tmp_path: Path) -> None:
    data = b"".join(b"row %d\n" % i for i in range(25))
    source = tmp_path / "data.csv"
    source.write_bytes(data)
    code, text = run(source, max_records=10, output_dir=str(tmp_path / "out"))
    assert code == 0, text
    bodies = written(tmp_path / "out")
    assert [body.count(b"\n") for body in bodies] == [10, 10, 5] and b"".join(bodies) == data
    assert "MaxRecordsPerRequest=10" in text and "3 requests" in text
    code, text = run(source, max_payload_mb=0, max_records=10, output_dir=str(tmp_path / "o"))
    assert code == 0 and written(tmp_path / "o") == bodies  # streamed bodies are capped too
    assert run(source, max_records=0) == (
        2,
        "error: --max-records-per-request must be an integer of 1 or more, not 0\n",
    )
