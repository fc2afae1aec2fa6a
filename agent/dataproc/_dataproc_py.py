"""The pure-Python twin of ``_native/_dataproc_c.pyx``: CSV columns picked over whole buffers.

Both twins take a buffer of lines (each ending in ``\\n``, the last one maybe not; a
``\\r`` before the ``\\n`` is not part of the row) and give back one line per row, each
ending in ``\\n``, with exactly the bytes ``agent.dataproc.csv`` defines: the fields a
``ColumnPicker`` selects, minimally quoted. A row that does not fit raises ``RowError``
with its index. This twin leans on ``bytes.split`` over lists of lines (see
``ColumnPicker.pick_lines``); rows with quotes take the full parser.
"""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import add

from agent.dataproc.csv import (
    ColumnPicker,
    CsvError,
    RowError,
    format_row,
    join_many,
    parse_row,
    quote_free,
)
from agent.job import PathMiss


def implementation() -> str:
    """``"python"`` for this twin."""
    return "python"


def lines_of(data: bytes) -> list[bytes]:
    """The rows of ``data``: lines without ``\\n``, and without a ``\\r`` before it."""
    if not data:
        return []
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    if b"\r" in data:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    return lines


def pick_rows(data: bytes, picker: ColumnPicker) -> tuple[bytes, list[int], list[int]]:
    """The picked columns of every row of ``data``, one line each.

    Returns ``(out, sent, read)``: row ``k`` starts at ``sent[k]`` in ``out`` and at
    ``read[k]`` in ``data``; both lists end with the total length.
    """
    rows = lines_of(data)
    if not rows:
        return b"", [0], [0]
    starts = data.split(b"\n")
    if not starts[-1]:
        starts.pop()
    read = list(accumulate(map(add, map(len, starts), repeat(1)), initial=0))
    read[-1] = len(data)
    try:
        picked = picker.pick_lines(rows, quote_free(data))
    except (PathMiss, CsvError):
        raise _locate(rows, picker) from None
    sent = list(accumulate(map(add, map(len, picked), repeat(1)), initial=0))
    picked.append(b"")  # so the join ends the last row with "\n" too
    return b"\n".join(picked), sent, read


def join_pick(left: bytes, right: bytes, picker: ColumnPicker | None) -> bytes:
    """Row ``k`` of ``left`` joined with row ``k`` of ``right`` (its fields appended), then
    the picked columns, one line each; without a picker the rows' bytes are kept as they
    are. Both buffers must hold the same number of rows (``ValueError`` otherwise)."""
    records, answers = lines_of(left), lines_of(right)
    if len(records) != len(answers):
        raise ValueError(f"{len(records)} rows to join with {len(answers)}")
    joined = join_many(records, answers)
    if picker is not None and joined:

        def one(k: int) -> bytes:  # each side parsed alone, as a row of its own
            try:
                fields = parse_row(records[k])
            except CsvError as error:
                raise RowError(k, error) from None
            try:
                fields += parse_row(answers[k])
            except CsvError as error:
                raise RowError(k, error, answer=True) from None
            try:
                return format_row(picker.pick(fields))
            except PathMiss as miss:
                raise RowError(k, miss) from None

        try:
            joined = picker.pick_lines(joined, quote_free(left) and quote_free(right), one)
        except PathMiss:
            for k in range(len(joined)):
                one(k)
            raise  # pragma: no cover - one() raised
    joined.append(b"")
    return b"\n".join(joined)


def _locate(rows: list[bytes], picker: ColumnPicker) -> RowError:
    for k, row in enumerate(rows):
        try:
            picker.pick_line(row)
        except (PathMiss, CsvError) as error:
            return RowError(k, error)
    raise AssertionError("a row failed, then passed")  # pragma: no cover
