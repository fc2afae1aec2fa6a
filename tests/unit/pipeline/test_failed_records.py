"""The pieces of record isolation that need no model: a failed record's errors-file line,
the instance's limit, runs of records under a refused size, and which errors a record may
be blamed for (docs/design.md §2.7)."""

from __future__ import annotations

import base64
import struct

import aiohttp
import orjson
import pytest

from agent.job import DataUri
from agent.model.client import InvocationError, ModelExitedError
from agent.model.process import ModelExit
from agent.pipeline.failures import FailureLimit
from agent.pipeline.lines import LinePerRecordError, RecordSpan
from agent.pipeline.requests import RECORD_TEXT_BYTES, FailedRecord, Held, _isolatable
from agent.split import Body
from agent.storage import errors_uri


def failed(n: int, data: bytes | None = b"a,b\n", status: int | None = 400) -> FailedRecord:
    return FailedRecord(
        input="s3://b/in/x.csv",
        record=n,
        offset=10 * n,
        length=4,
        status=status,
        error="bad\n",
        attempts=1,
        data=data,
        output=None,
    )


def test_an_entry_is_one_json_line() -> None:
    line = failed(3).entry()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "input": "s3://b/in/x.csv",
        "record": 3,
        "offset": 30,
        "length": 4,
        "status": 400,
        "error": "bad\n",
        "attempts": 1,
        "record_text": "a,b\n",
    }


def test_a_record_that_is_not_utf8_is_in_base64() -> None:
    entry = orjson.loads(failed(0, data=b"\xff\x00x").entry())
    assert "record_text" not in entry
    assert base64.b64decode(entry["record_base64"]) == b"\xff\x00x"


def test_a_record_not_kept_is_named_only() -> None:
    entry = orjson.loads(failed(0, data=None, status=None).entry())
    assert "record_text" not in entry and "record_base64" not in entry
    assert entry["status"] is None


def test_where_names_file_record_byte_and_status() -> None:
    assert failed(2).where() == "s3://b/in/x.csv record 2 (byte 20, status 400)"
    assert failed(2, status=None).where() == "s3://b/in/x.csv record 2 (byte 20, no answer)"


@pytest.mark.parametrize(("limit", "passes_at"), [(0, 1), (3, 4), (-1, None), (None, None)])
def test_the_limit_is_passed_once(limit: int | None, passes_at: int | None) -> None:
    counter = FailureLimit(limit)
    reasons = [counter.add([failed(n)]) for n in range(6)]
    passed = [n + 1 for n, reason in enumerate(reasons) if reason is not None]
    assert passed == ([] if passes_at is None else [passes_at])


def test_the_reason_names_the_first_records() -> None:
    counter = FailureLimit(1)
    assert counter.add([failed(4)]) is None
    reason = counter.add([failed(8), failed(9), failed(10)])
    assert reason is not None
    assert reason.startswith("more records failed than Agent.MaxFailedRecords allows (1): ")
    assert "4 failed on this instance (the first 3 named)" in reason
    assert "record 4 (byte 40" in reason and "record 9 (byte 90" in reason
    assert "record 10 " not in reason


def ends(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def test_runs_under_a_size_are_greedy_and_keep_a_large_record_alone() -> None:
    sizes = [10, 10, 10, 50, 10, 10]
    offsets = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    data = b"x" * offsets[-1]
    held = Held(
        "s3://b/x", Body(data, 100, 100 + len(data), len(sizes), True, True, ends(*offsets)), 0
    )
    assert held.cuttable
    assert held.runs_below(0, 6, 25) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert held.runs_below(1, 4, 100) == [(1, 4)]
    assert [held.sent_at(i) for i in range(7)] == [0, *offsets]


def test_a_body_without_record_ends_is_not_cut() -> None:
    held = Held("s3://b/x", Body(b"a\nb\n", 0, 4, 2, True, True), 0)
    assert not held.cuttable


def test_a_single_record_frame_counts_its_input_bytes() -> None:
    """SingleRecord RecordIO sends the payload; the record's length is its frame's."""
    held = Held("s3://b/x", Body(b"pay", 16, 32, 1, True, True), 5)
    assert (held.input_at(0), held.input_at(1), held.sent_at(1)) == (0, 16, 3)


def invocation(status: int | None, cause: BaseException | None = None) -> InvocationError:
    error = InvocationError("x", what="x", attempts=1, status=status)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "blamed"),
    [
        (invocation(400), True),
        (invocation(500), True),
        (invocation(413), True),
        (invocation(429), False),
        (invocation(None, TimeoutError()), True),
        (invocation(None, aiohttp.ServerDisconnectedError()), True),
        (
            invocation(
                None,
                aiohttp.ClientConnectorError(
                    aiohttp.client_reqrep.ConnectionKey(
                        "127.0.0.1", 1, False, True, None, None, None
                    ),
                    ConnectionRefusedError(111, "refused"),
                ),
            ),
            False,
        ),
        (ModelExitedError("x", ModelExit(returncode=3, tail=""), 1), False),
        (LinePerRecordError(RecordSpan("u", 0, 0, 1, 1), "short"), True),
        (ValueError("other"), False),
    ],
)
def test_which_errors_a_record_may_be_blamed_for(error: BaseException, blamed: bool) -> None:
    assert _isolatable(error) is blamed


def test_the_errors_file_sits_beside_the_output() -> None:
    assert errors_uri(DataUri("s3", "b", "out/a/x.csv.out")) == DataUri(
        "s3", "b", "out/a/x.csv.errors.jsonl"
    )


def test_a_record_copy_is_capped_at_a_mebibyte() -> None:
    assert RECORD_TEXT_BYTES == 1 << 20
