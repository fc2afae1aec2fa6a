"""``Agent.RequireLinePerRecord``'s counting and its reason (agent/pipeline/lines.py)."""

from __future__ import annotations

import asyncio

import pytest

from agent.pipeline.lines import (
    LINE_COUNT_INLINE_BYTES,
    LinePerRecordError,
    RecordSpan,
    check_line_per_record,
    count_lines,
    line_rule_problem,
)


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", 0),
        (b"\n", 1),  # one empty line
        (b"a", 1),
        (b"a\n", 1),
        (b"a\nb", 2),
        (b"a\nb\n", 2),
        (b"a\r\nb\r\n", 2),  # \r\n ends one line
        (b"a\r\nb", 2),
        (b"a\rb\r", 1),  # a lone \r ends no line
        (b"\n\n", 2),
        (b"a\n\n", 2),  # a blank last line is a line
    ],
)
def test_count_lines(data: bytes, lines: int) -> None:
    assert count_lines(data) == lines
    assert count_lines(bytearray(data)) == lines
    assert count_lines(memoryview(data)) == lines
    assert count_lines(memoryview(b"xx" + data + b"yy")[2 : 2 + len(data)]) == lines


def test_count_lines_of_a_memoryview_over_many_chunks() -> None:
    data = b"abc\n" * ((3 << 20) // 4) + b"tail"
    assert count_lines(memoryview(data)) == (3 << 20) // 4 + 1
    assert count_lines(memoryview(data)[1:-4]) == (3 << 20) // 4


@pytest.mark.parametrize(
    ("answer", "records"),
    [(b"", 0), (b"1\n2\n3\n", 3), (b"1\n2\n3", 3), (b"1\r\n2\r\n", 2), (b"\n", 1)],
)
def test_answers_that_keep_the_rule(answer: bytes, records: int) -> None:
    assert line_rule_problem(bytearray(answer), records) is None


@pytest.mark.parametrize(
    ("answer", "records", "reason"),
    [
        (b"1\n2\n", 3, "the answer has 2 lines for 3 records"),
        (b"1\n2\n3\n4", 3, "the answer has 4 lines for 3 records"),
        (b"", 1, "the answer has 0 lines for 1 record"),
        (b"\n", 0, "the answer has 1 line for 0 records"),
        (b"1\n\n", 1, "the answer has 2 lines for 1 record"),
        (b"1,2\r3\n", 2, "the answer has 1 line for 2 records"),
    ],
)
def test_answers_that_break_the_rule(answer: bytes, records: int, reason: str) -> None:
    assert line_rule_problem(answer, records) == f"{reason} (Agent.RequireLinePerRecord)"


def test_the_reason_names_the_file_records_and_bytes() -> None:
    span = RecordSpan("s3://b/in/x.csv", 1000, 2048, 4096, 1000)
    with pytest.raises(LinePerRecordError) as caught:
        asyncio.run(check_line_per_record(bytearray(b"x\n" * 999), span))
    assert str(caught.value) == (
        "s3://b/in/x.csv records 1000-1999 (bytes [2048, 4096)): the answer has 999 lines "
        "for 1000 records (Agent.RequireLinePerRecord)"
    )


def test_one_record_and_none_are_said_so() -> None:
    assert str(RecordSpan("s3://b/x", 7, 10, 20, 1)) == "s3://b/x record 7 (bytes [10, 20))"
    assert str(RecordSpan("s3://b/x", 7, 10, 10, 0)) == "s3://b/x no records (bytes [10, 10))"


def test_a_large_answer_is_counted_off_the_loop_alike() -> None:
    records = LINE_COUNT_INLINE_BYTES // 2 + 1
    span = RecordSpan("s3://b/x", 0, 0, 1, records)
    asyncio.run(check_line_per_record(bytearray(b"1\n" * records), span))
    with pytest.raises(LinePerRecordError, match=f"{records - 1} lines for {records} records"):
        asyncio.run(check_line_per_record(bytearray(b"1\n" * (records - 1)), span))


def test_a_streamed_body_is_checked_once_its_count_is_known() -> None:
    async def run() -> None:
        span = RecordSpan("s3://b/x", 5, 100)
        check = asyncio.create_task(check_line_per_record(b"1\n2\n", span))
        await asyncio.sleep(0)
        assert not check.done()  # the body's count is not known yet
        span.close(3, 130)
        with pytest.raises(LinePerRecordError, match=r"records 5-7 \(bytes \[100, 130\)\)"):
            await check

    asyncio.run(run())
