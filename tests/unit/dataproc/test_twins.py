"""CSV rows over whole buffers: the compiled twin and the pure one give the same bytes.

Every test runs against both twins (ids ``c`` and ``py``); the differential tests feed
both the same generated buffers — quoted fields, stray quotes, ``\\r\\n`` and bare ``\\r``,
empty lines, rows of odd widths, no final newline — and compare outputs, offsets and
errors (row, type and message). The reference is the row-at-a-time definition in
``agent.dataproc.csv``: ``format_row(picker.pick(parse_row(line)))``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import ModuleType

import pytest

from agent.dataproc import records
from agent.dataproc.csv import ColumnPicker, CsvError, RowError, format_row, parse_row
from agent.job import PathMiss, parse_path

FIELDS = [b"", b"a", b"12.5", b"x y", b'q"', b"c,d", b'"', b"\xc3\xa9", b"\r", b"id-7"]
FILTERS = [
    "$", "$[0]", "$[-1]", "$[1:]", "$[:1]", "$[1:2]", "$[0,-1]", "$[2,0]", "$[0,3:]",
    "$[*]", "$[-1,-3]", "$[5,-1]", "$[-2:]",
]  # fmt: skip


def reference(data: bytes, picker: ColumnPicker) -> bytes:
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    out = b""
    for line in lines:
        row = line[:-1] if line.endswith(b"\r") else line
        out += format_row(picker.pick(parse_row(row))) + b"\n"
    return out


def buffer(rng: random.Random, quoted: float) -> bytes:
    width = rng.randrange(1, 7)
    lines = []
    for _ in range(rng.randrange(0, 25)):
        pool = FIELDS if rng.random() < quoted else [f for f in FIELDS if f not in (b'"', b'q"')]
        odd = rng.random() < 0.05
        fields = [rng.choice(pool) for _ in range(width + odd)]
        line = format_row(fields) if rng.random() < 0.97 else b""
        if rng.random() < 0.02:
            line = b'"unclosed,' + line
        lines.append(line + rng.choice([b"\n", b"\n", b"\r\n"]))
    data = b"".join(lines)
    return data[:-1] if data and rng.random() < 0.3 else data


def outcome(function: Callable[..., object], *args: object) -> object:
    try:
        return function(*args)
    except RowError as error:
        return ("RowError", error.row, type(error.cause).__name__, str(error.cause), error.answer)


@pytest.mark.parametrize("text", FILTERS)
def test_pick_rows_matches_the_definition(dataproc_twin: ModuleType, text: str) -> None:
    rng = random.Random(text)
    picker = ColumnPicker(parse_path(text))
    for _ in range(150):
        data = buffer(rng, rng.choice([0.0, 0.1, 0.6]))
        try:
            expected = reference(data, picker)
        except (PathMiss, CsvError):
            with pytest.raises(RowError):
                dataproc_twin.pick_rows(data, picker)
            continue
        out, sent, read = dataproc_twin.pick_rows(data, picker)
        assert out == expected, (text, data)
        assert sent[-1] == len(out) and read[-1] == len(data)
        assert len(sent) == len(read) == out.count(b"\n") + 1
        for k in range(len(sent) - 1):
            row = data[read[k] : read[k + 1]].rstrip(b"\n").removesuffix(b"\r")
            assert out[sent[k] : sent[k + 1]] == reference(row + b"\n", picker)


@pytest.mark.compiled_only
@pytest.mark.parametrize("text", ["$", "$[0]", "$[0,-1]", "$[1:]", "$[-1]", "$[0,5]"])
def test_twins_agree_on_pick_rows(text: str) -> None:
    from agent.dataproc import _dataproc_c as c  # type: ignore[attr-defined]
    from agent.dataproc import _dataproc_py as py

    rng = random.Random("agree" + text)
    picker = ColumnPicker(parse_path(text))
    for _ in range(300):
        data = buffer(rng, rng.choice([0.0, 0.2]))
        assert outcome(c.pick_rows, data, picker) == outcome(py.pick_rows, data, picker), data
        answers = buffer(random.Random(data), 0.1)
        n = records.count_lines(data)
        answers = b"".join(line + b"\n" for line in answers.splitlines()[:n])
        if records.count_lines(answers) != n:
            continue
        for join_picker in (picker, None):
            args = (data, answers, join_picker)
            assert outcome(c.join_pick, *args) == outcome(py.join_pick, *args), args


def test_join_pick(dataproc_twin: ModuleType) -> None:
    picker = ColumnPicker(parse_path("$[0,-1]"))
    left = b'id-1,0.5,1.5\r\nid-2,"a,b"\n\nid-4,9'
    right = b'0.9\n"x,y"\n0.3\n""\n'
    assert dataproc_twin.join_pick(left, right, None) == (
        b'id-1,0.5,1.5,0.9\nid-2,"a,b","x,y"\n0.3\nid-4,9,""\n'
    )
    # An empty row joins as no fields: "0.3" alone is both the first and the last column.
    assert dataproc_twin.join_pick(left, right, picker) == b'id-1,0.9\nid-2,"x,y"\n0.3,0.3\nid-4,\n'
    assert dataproc_twin.join_pick(b"", b"", picker) == b""
    with pytest.raises(ValueError):
        dataproc_twin.join_pick(b"a\nb\n", b"1\n", picker)


def test_errors_name_the_row_and_the_side(dataproc_twin: ModuleType) -> None:
    picker = ColumnPicker(parse_path("$[0,3]"))
    with pytest.raises(RowError) as caught:
        dataproc_twin.pick_rows(b"a,b,c,d\na,b\n", picker)
    assert caught.value.row == 1 and isinstance(caught.value.cause, PathMiss)
    assert "only 2 columns" in str(caught.value.cause)
    with pytest.raises(RowError) as caught:
        dataproc_twin.pick_rows(b'a,b,c,d\na,"b\n', picker)
    assert caught.value.row == 1 and "opened at character 3 is never closed" in str(
        caught.value.cause
    )
    with pytest.raises(RowError) as caught:
        dataproc_twin.join_pick(b"a,b\nc,d\n", b'1,2\n"x"y,2\n', picker)
    error = caught.value
    assert (error.row, error.answer) == (1, True) and "followed by 'y'" in str(error.cause)
    with pytest.raises(RowError) as caught:
        dataproc_twin.join_pick(b'a,b\n"c\n', b"1,2\n1,2\n", picker)
    assert (caught.value.row, caught.value.answer) == (1, False)


def test_quoting_is_minimal(dataproc_twin: ModuleType) -> None:
    picker = ColumnPicker(parse_path("$[*]"))
    data = b'"plain","a,b","say ""hi""",5" tall,cr\rx,""\n'
    out, _, _ = dataproc_twin.pick_rows(data, picker)
    assert out == b'plain,"a,b","say ""hi""","5"" tall","cr\rx",\n'
    out, _, _ = dataproc_twin.pick_rows(b'a,""\n', ColumnPicker(parse_path("$[1]")))
    assert out == b'""\n'
