"""CSV rows as DataProcessing sees them: RFC 4180 fields, bytes in and bytes out.

A row is one line without its terminator. Fields are separated by commas; a field that
starts with ``"`` is quoted, ends at the next lone ``"`` and turns ``""`` into ``"``.
Fields cannot span lines (SageMaker's rule: no embedded newlines). A ``"`` inside an
unquoted field is kept as it is, as spreadsheet exports sometimes do. An empty line is
a row of no fields (as Python's ``csv`` module reads it); ``""`` is a row of one empty
field. Rows are written back with minimal quoting: a field is quoted only when it holds
a comma, a quote or a line break, so quoted fields come back exactly as they were.

Bytes are never decoded: the delimiters are ASCII, so UTF-8 text passes through intact.

:class:`ColumnPicker` applies a columnar filter (``$[1:]``, ``$[0,-1]``, ``$[*]``) to a
line. Most lines hold no quote at all; for those it cuts with ``bytes.split`` (with a
``maxsplit`` when the columns picked are one run) and never builds a field it drops,
and what it writes needs no quoting. Lines with quotes take the full parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import itemgetter

from agent.errors import BtAgentError
from agent.job import JsonPath

_QUOTE = 0x22
_COMMA = 0x2C
_NEEDS_QUOTES = re.compile(rb'[,"\r\n]')
_PLANS_KEPT = 64  # distinct row widths remembered per filter

LinePlan = Callable[[bytes], bytes]
LinesPlan = Callable[[list[bytes]], list[bytes]]


class CsvError(BtAgentError, ValueError):
    """A line that is not an RFC 4180 row; the message names the character."""


class RowError(BtAgentError, ValueError):
    """Row ``row`` (0-based) of a buffer did not fit: ``cause`` is a ``CsvError`` or a
    ``PathMiss``; ``answer``: the row came from the model's answer, not the input."""

    def __init__(self, row: int, cause: ValueError, answer: bool = False) -> None:
        super().__init__(f"row {row}: {cause}")
        self.row = row
        self.cause = cause
        self.answer = answer


# Both twins build their messages here, so they say exactly the same thing.
def unclosed_quote(opened: int) -> CsvError:
    return CsvError(
        f"the quoted field opened at character {opened + 1} is never closed "
        "(fields cannot span lines)"
    )


def after_quote(opened: int, char: int, at: int) -> CsvError:
    return CsvError(
        f"the quoted field opened at character {opened + 1} is followed by "
        f"{chr(char)!r} at character {at + 1}; a comma must follow the closing quote"
    )


def parse_row(line: bytes) -> list[bytes]:
    """The fields of one line (terminator removed)."""
    if not line:
        return []
    if b'"' not in line:
        return line.split(b",")
    return _parse_quoted(line)


def _parse_quoted(line: bytes) -> list[bytes]:
    fields: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        if i < n and line[i] == _QUOTE:
            opened = i
            parts: list[bytes] = []
            j = i + 1
            while True:
                k = line.find(b'"', j)
                if k < 0:
                    raise unclosed_quote(opened)
                parts.append(line[j:k])
                if k + 1 < n and line[k + 1] == _QUOTE:
                    parts.append(b'"')
                    j = k + 2
                    continue
                break
            fields.append(parts[0] if len(parts) == 1 else b"".join(parts))
            i = k + 1
            if i == n:
                return fields
            if line[i] != _COMMA:
                raise after_quote(opened, line[i], i)
            i += 1
        else:
            k = line.find(b",", i)
            if k < 0:
                fields.append(line[i:])
                return fields
            fields.append(line[i:k])
            i = k + 1


def format_row(fields: Sequence[bytes]) -> bytes:
    """One line (no terminator) with minimal quoting."""
    if len(fields) == 1 and not fields[0]:
        return b'""'  # one empty field, told apart from a row of none
    search = _NEEDS_QUOTES.search
    return b",".join(
        [b'"' + field.replace(b'"', b'""') + b'"' if search(field) else field for field in fields]
    )


def join_many(lefts: list[bytes], rights: list[bytes]) -> list[bytes]:
    """Pairs of lines as rows: the fields of each ``left`` then those of its ``right``,
    bytes kept (an empty side adds no comma)."""
    return [
        (left + b"," + right if right else left) if left else right
        for left, right in zip(lefts, rights, strict=True)
    ]


def quote_free(data: bytes) -> bool:
    """Whether no line of ``data`` holds a ``"`` or a ``\\r`` other than one ending it."""
    return b'"' not in data and data.count(b"\r") == data.count(b"\r\n")


class ColumnPicker:
    """A columnar filter applied to CSV lines; ``PathMiss`` names a missing column."""

    __slots__ = ("path", "_plans")

    def __init__(self, path: JsonPath) -> None:
        if not path.is_columnar:
            raise ValueError(f"{path.text} picks by name; CSV rows take index filters only")
        self.path = path
        self._plans: dict[int, tuple[LinePlan, LinesPlan]] = {}

    def columns(self, count: int) -> tuple[int, ...]:
        """The indexes picked from a row of ``count`` fields; ``PathMiss`` if one is missing."""
        return self.path.columns(count)

    def pick(self, fields: Sequence[bytes]) -> list[bytes]:
        """The fields the filter selects, in its order."""
        return [fields[i] for i in self.path.columns(len(fields))]

    def pick_line(self, line: bytes) -> bytes:
        """The selected fields of ``line`` as a line (no terminator), minimally quoted."""
        if b'"' in line or b"\r" in line:
            return format_row(self.pick(parse_row(line)))
        return self._plan(line.count(b",") + 1 if line else 0)[0](line)

    def pick_lines(
        self,
        lines: list[bytes],
        quote_free: bool = False,
        one: Callable[[int], bytes] | None = None,
    ) -> list[bytes]:
        """``pick_line`` over many lines, cut together where they allow it.

        Lines without a ``"`` or a ``\\r``, all of one width, share one cut; the others
        go one by one, through ``one(index)`` when given. ``quote_free``: the caller knows
        that no line holds a ``"`` or a ``\\r``, so they need not be looked for.
        """
        single = one or (lambda k: self.pick_line(lines[k]))
        if not lines:
            return []
        special = [] if quote_free else [k for k, x in enumerate(lines) if b'"' in x or b"\r" in x]
        work = lines
        if special:
            if len(special) * 4 > len(lines):
                return [single(k) for k in range(len(lines))]
            marked = set(special)
            plain = next((x for k, x in enumerate(lines) if k not in marked), b"")
            work = lines.copy()
            for k in special:  # a stand-in of the same width, its cut replaced below
                work[k] = b"," * plain.count(b",")
        counts = [x.count(b",") for x in work]
        commas = counts[0]
        if not commas or counts.count(commas) != len(counts):
            marked = set(special)
            return [single(k) if k in marked else self.pick_line(x) for k, x in enumerate(lines)]
        out = self._plan(commas + 1)[1](work)
        for k in special:
            out[k] = single(k)
        return out

    def _plan(self, count: int) -> tuple[LinePlan, LinesPlan]:
        plan = self._plans.get(count)
        if plan is None:
            plan = _cutter(self.path.columns(count), count)
            if len(self._plans) < _PLANS_KEPT:
                self._plans[count] = plan
        return plan


def _cutter(picked: tuple[int, ...], count: int) -> tuple[LinePlan, LinesPlan]:
    """How to cut quote-free lines of ``count`` fields: for one line, and for a list.

    The fields of such lines never need quotes, so the cut bytes are the answer, except a
    row of one empty field, written ``""``. Runs of columns are cut with a ``maxsplit`` so
    the fields dropped are never built.
    """
    if not picked:
        return (lambda line: b""), (lambda lines: [b""] * len(lines))
    first, last = picked[0], picked[-1]
    if len(picked) == 1:
        if count == 1:
            return (lambda line: line or b'""'), (lambda lines: [x or b'""' for x in lines])
        cut = first + 1
        return (
            (lambda line: line.split(b",", cut)[first] or b'""'),
            (lambda lines: [x.split(b",", cut)[first] or b'""' for x in lines]),
        )
    if picked == tuple(range(first, last + 1)):
        if first == 0 and last == count - 1:
            return (lambda line: line), (lambda lines: lines)
        if last == count - 1:  # everything after the first-th comma
            return (
                (lambda line: line.split(b",", first)[first]),
                (lambda lines: [x.split(b",", first)[first] for x in lines]),
            )
        if first == 0:  # everything before the dropped-th comma from the right
            dropped = count - 1 - last
            return (
                (lambda line: line.rsplit(b",", dropped)[0]),
                (lambda lines: [x.rsplit(b",", dropped)[0] for x in lines]),
            )
        cut = last + 1
        return (
            (lambda line: b",".join(line.split(b",", cut)[first:cut])),
            (lambda lines: [b",".join(x.split(b",", cut)[first:cut]) for x in lines]),
        )
    return _ends(picked, count)


def _ends(picked: tuple[int, ...], count: int) -> tuple[LinePlan, LinesPlan]:
    """Scattered columns: split off as few fields from each end as they need.

    ``$[0,-1]`` on a wide row takes one ``split`` and one ``rsplit`` with a maxsplit of 1,
    so the middle stays one piece. ``h`` fields are cut from the start, ``t`` from the end,
    and the getter indexes the two lists put end to end.
    """
    h = max((i + 1 for i in picked if 2 * i < count), default=0)
    t = max((count - i for i in picked if 2 * i >= count), default=0)
    if h + t >= count:  # nothing to leave whole: split every field
        getter = itemgetter(*picked)
        return (
            (lambda line: b",".join(getter(line.split(b",")))),
            (lambda lines: [b",".join(getter(x.split(b","))) for x in lines]),
        )
    # split(b",", h) gives h fields and the rest; rsplit(b",", t) the rest and t fields.
    tail_at = (h + 1 if h else 0) + 1 - (count - t)
    getter = itemgetter(*[i if i < h else i + tail_at for i in picked])
    if not t:
        return (
            (lambda line: b",".join(getter(line.split(b",", h)))),
            (lambda lines: [b",".join(getter(x.split(b",", h))) for x in lines]),
        )
    if not h:
        return (
            (lambda line: b",".join(getter(line.rsplit(b",", t)))),
            (lambda lines: [b",".join(getter(x.rsplit(b",", t))) for x in lines]),
        )
    return (
        (lambda line: b",".join(getter(line.split(b",", h) + line.rsplit(b",", t)))),
        (lambda lines: [b",".join(getter(x.split(b",", h) + x.rsplit(b",", t))) for x in lines]),
    )
