"""The per-record work of DataProcessing over whole buffers: InputFilter, and (after the
model) JoinSource and OutputFilter, for CSV rows and JSON values (docs/design.md §2.5).

With SplitType Line a record is one line; its terminator (``\\n``, and a ``\\r`` before
it) is not part of the value, and every line written here ends with ``\\n``. With
SplitType None (``application/json``) the whole object is the one record, and the whole
response its one answer. Any filter but ``$`` re-serialises: compact JSON, or minimally
quoted CSV.

CSV runs in the compiled ``_dataproc_c`` (pure twin ``_dataproc_py``), one call per buffer.
JSON goes through orjson one record at a time, except in a buffer holding a run of 20
digits: orjson reads integers past 64 bits as floats, which would round a long numeric
ID, so such buffers take the standard library's exact parser.

A record that does not fit raises ``RowError`` with its index in the buffer; the
processor turns it into a sentence naming the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import accumulate, repeat
from operator import add
from typing import TYPE_CHECKING

import orjson

from agent._compat import NO_EXTENSIONS, BytesLike
from agent.dataproc.csv import ColumnPicker, CsvError, RowError
from agent.errors import BtAgentError
from agent.job import JsonPath, PathMiss

if TYPE_CHECKING or NO_EXTENSIONS:
    from agent.dataproc._dataproc_py import implementation, join_pick, lines_of, pick_rows
else:
    try:
        from agent.dataproc._dataproc_c import implementation, join_pick, pick_rows
    except ImportError:  # pragma: no cover - a source tree that was never built
        from agent.dataproc._dataproc_py import implementation, join_pick, pick_rows
    from agent.dataproc._dataproc_py import lines_of

Loads = Callable[[BytesLike], object]
Rows = tuple[bytes, list[int], list[int]]  # out, where each row starts in it, and in the input
InputStep = Callable[[bytes], Rows]
OutputStep = Callable[[bytes, bytes], bytes]

# Digits to "0", so that a run of 20 zeros marks a number orjson may not hold exactly.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 20
JSON_ERRORS = (PathMiss, orjson.JSONDecodeError, json.JSONDecodeError)
IMPLEMENTATION: str = implementation()


class DataProcessingError(BtAgentError, ValueError):
    """A record or a response DataProcessing cannot handle; the message says which and why."""


def loads_for(*buffers: bytes) -> Loads:
    """The JSON reader for records cut from ``buffers`` (exact for long integers)."""
    for buffer in buffers:
        if _LONG_NUMBER in buffer.translate(_DIGITS_AS_ZERO):
            return _exact_loads
    return orjson.loads


def _exact_loads(data: BytesLike) -> object:
    return json.loads(bytes(data), parse_constant=_no_constant)


def _no_constant(token: str) -> object:
    raise json.JSONDecodeError(f"{token} is not JSON", token, 0)


def dumps(value: object) -> bytes:
    """Compact JSON; integers past 64 bits are written exactly."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: an integer orjson cannot hold
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def joined(record: object, output: object) -> object:
    """JoinSource=Input for JSON: an object gains ``SageMakerOutput``; other values are wrapped."""
    if isinstance(record, dict):
        record["SageMakerOutput"] = output
        return record
    return {"SageMakerInput": record, "SageMakerOutput": output}


def count_lines(data: bytes) -> int:
    """How many lines ``lines_of`` would return, without building them."""
    if not data:
        return 0
    return data.count(b"\n") + (data[-1] != 0x0A)


def line_offset(data: bytes, row: int) -> int:
    """Where line ``row`` of ``data`` starts."""
    offset = 0
    for _ in range(row):
        offset = data.index(b"\n", offset) + 1
    return offset


def reason(error: ValueError, role: str, path: JsonPath, whose: str) -> str:
    """What went wrong with one record, as a sentence without its subject's position."""
    if isinstance(error, PathMiss):
        return f"{role} {path.text} does not fit {whose}: {error}"
    if isinstance(error, CsvError):
        return f"{whose} is not an RFC 4180 CSV row: {error}"
    text = str(error).split(": line 1 column")[0]  # orjson's message, without a position
    return f"{whose} is not valid JSON ({text})"


class Side:
    """One side's filter as steps over whole buffers: CSV, JSON, or untouched (``None``)."""

    __slots__ = ("path", "csv", "picker", "select")

    def __init__(self, path: JsonPath, csv: bool) -> None:
        self.path = path
        self.csv = csv
        self.picker = ColumnPicker(path) if csv and not path.is_root else None
        self.select = path.compile()

    def rows_step(self) -> InputStep | None:
        """InputFilter over a buffer of lines; ``None`` for ``$``."""
        if self.path.is_root:
            return None
        picker, select = self.picker, self.select
        if picker is not None:
            return lambda data: pick_rows(data, picker)

        def json_rows(data: bytes) -> Rows:
            loads, records = loads_for(data), lines_of(data)
            try:
                out = [dumps(select(loads(record))) for record in records]
            except JSON_ERRORS:
                for row, record in enumerate(records):
                    try:
                        select(loads(record))
                    except JSON_ERRORS as error:
                        raise RowError(row, error) from None
                raise  # pragma: no cover - the loop raised
            return _rows(out, data)

        return json_rows

    def document_step(self) -> Callable[[bytes], bytes] | None:
        """InputFilter over one whole JSON document; ``None`` for ``$``."""
        if self.path.is_root:
            return None
        select = self.select

        def json_document(data: bytes) -> bytes:
            try:
                return dumps(select(loads_for(data)(data)))
            except JSON_ERRORS as error:
                raise RowError(0, error) from None

        return json_document

    def output_step(self, join: bool, lines: bool) -> OutputStep | None:
        """``(inputs, response) -> output``: JoinSource, then OutputFilter, per record.

        Both buffers hold the same number of lines (or are one document each).
        """
        picker, select = self.picker, self.select
        if self.csv:
            if join:
                return lambda inputs, response: join_pick(inputs, response, picker)
            if picker is None:
                return None
            return lambda inputs, response: pick_rows(response, picker)[0]
        if self.path.is_root and not join:
            return None

        def one(record: bytes, answer: bytes, loads: Loads, row: int) -> bytes:
            try:
                value = loads(answer)
            except JSON_ERRORS as error:
                raise RowError(row, error, answer=True) from None
            try:
                if join:
                    value = joined(loads(record), value)
                return dumps(select(value))
            except JSON_ERRORS as error:
                raise RowError(row, error) from None

        if not lines:
            return lambda inputs, response: one(inputs, response, loads_for(inputs, response), 0)

        def json_lines(inputs: bytes, response: bytes) -> bytes:
            answers = lines_of(response)
            records = lines_of(inputs) if join else answers
            loads = loads_for(inputs, response) if join else loads_for(response)
            try:
                if join:
                    out = [
                        dumps(select(joined(loads(record), loads(answer))))
                        for record, answer in zip(records, answers, strict=True)
                    ]
                else:
                    out = [dumps(select(loads(answer))) for answer in answers]
            except JSON_ERRORS:
                for row, (record, answer) in enumerate(zip(records, answers, strict=True)):
                    one(record, answer, loads, row)
                raise  # pragma: no cover - one() raised
            out.append(b"")  # so the join ends the last line with "\n" too
            return b"\n".join(out)

        return json_lines


def _rows(out: list[bytes], data: bytes) -> Rows:
    """``(out, sent, read)`` for filtered lines ``out`` of the lines of ``data``."""
    ends = data.split(b"\n")
    if not ends[-1]:
        ends.pop()
    read = list(accumulate(map(add, map(len, ends), repeat(1)), initial=0))
    read[-1] = len(data)
    sent = list(accumulate(map(add, map(len, out), repeat(1)), initial=0))
    out.append(b"")
    return b"\n".join(out), sent, read
