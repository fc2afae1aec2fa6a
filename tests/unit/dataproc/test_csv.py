"""CSV rows (RFC 4180, no embedded newlines): reading, writing, and picking columns."""

from __future__ import annotations

import csv
import io
import random

import pytest

from agent.dataproc import CsvError, PathMiss, format_row, parse_path, parse_row
from agent.dataproc.csv import _NEEDS_QUOTES, ColumnPicker, join_many, quote_free


@pytest.mark.parametrize(
    ("line", "fields"),
    [
        (b"", []),
        (b"a", [b"a"]),
        (b"a,b,c", [b"a", b"b", b"c"]),
        (b",", [b"", b""]),
        (b'""', [b""]),
        (b'a,"b,c",d', [b"a", b"b,c", b"d"]),
        (b'"say ""hi""",x', [b'say "hi"', b"x"]),
        (b'"",""', [b"", b""]),
        (b'a,""', [b"a", b""]),
        (b'5" tall,x', [b'5" tall', b"x"]),  # a quote inside an unquoted field stays
        (b'"caf\xc3\xa9, cr\xc3\xa8me",2', ["café, crème".encode(), b"2"]),
        (b'a, "b"', [b"a", b' "b"']),  # a space before the quote: not a quoted field
    ],
)
def test_parse_row(line: bytes, fields: list[bytes]) -> None:
    assert parse_row(line) == fields


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'a,"b', "opened at character 3 is never closed"),
        (b'"a"b,c', "followed by 'b' at character 4"),
    ],
)
def test_parse_row_errors(line: bytes, words: str) -> None:
    with pytest.raises(CsvError, match=words):
        parse_row(line)


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ([], b""),
        ([b""], b'""'),
        ([b"", b""], b","),
        ([b"a", b"b,c"], b'a,"b,c"'),
        ([b'say "hi"'], b'"say ""hi"""'),
        ([b"cr\r"], b'"cr\r"'),
        ([b"plain", b"x y"], b"plain,x y"),
    ],
)
def test_format_row_quotes_minimally(fields: list[bytes], line: bytes) -> None:
    assert format_row(fields) == line
    assert parse_row(line) == fields


def test_quoted_fields_come_back_intact() -> None:
    line = b'id-1,"Smith, John","He said ""no""",42'
    assert format_row(parse_row(line)) == line
    assert ColumnPicker(parse_path("$[1:]")).pick_line(line) == b'"Smith, John","He said ""no""",42'


def test_join_rows() -> None:
    assert join_many([b"a,b"], [b"0.9"]) == [b"a,b,0.9"]
    assert join_many([b""], [b"0.9"]) == [b"0.9"]
    assert join_many([b"a"], [b""]) == [b"a"]
    assert join_many([b"a,b", b"", b"c"], [b"1", b"2", b""]) == [b"a,b,1", b"2", b"c"]


def test_quote_free() -> None:
    assert quote_free(b"a,b\r\nc\n")
    assert not quote_free(b'a,"b"\n')
    assert not quote_free(b"a\rb\n")


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("$[1:]", b"id,1,2,3", b"1,2,3"),
        ("$[1:]", b"id", b""),
        ("$[1:]", b"id,", b'""'),
        ("$[0,5:]", b"0,1,2,3,4,5,6", b"0,5,6"),
        ("$[0,-1]", b"id,1,2,0.97", b"id,0.97"),
        ("$[:1]", b"a,b,c", b"a,b"),
        ("$[1:2]", b"a,b,c,d", b"b,c"),
        ("$[2]", b"a,b,,d", b'""'),
        ("$[3,1]", b"a,b,c,d", b"d,b"),
        ("$[*]", b"a,b", b"a,b"),
        ("$[0,-1]", b'"x,y",2,"3"', b'"x,y",3'),
        ("$[0,-1]", b"a,b\rc,d", b"a,d"),
        ("$[1]", b"a,b\rc,d", b'"b\rc"'),
    ],
)
def test_pick_line(text: str, line: bytes, expected: bytes) -> None:
    assert ColumnPicker(parse_path(text)).pick_line(line) == expected


def test_pick_line_out_of_range() -> None:
    picker = ColumnPicker(parse_path("$[0,7]"))
    with pytest.raises(PathMiss, match="only 3 columns"):
        picker.pick_line(b"a,b,c")
    with pytest.raises(PathMiss, match="only 3 columns"):
        picker.pick_line(b'a,"b",c')
    with pytest.raises(ValueError, match="by name"):
        ColumnPicker(parse_path("$.id"))


FIELDS = [b"", b"a", b"bc", b"1.5", b"x y", b'q"', b"c,d", b'"', b"\xc3\xa9", b"\r"]
FILTERS = [
    "$", "$[0]", "$[-1]", "$[1:]", "$[:2]", "$[1:3]", "$[0,-1]", "$[2,0]", "$[0,2:]", "$[*]",
    "$[-1,-3]", "$[5,-1]", "$[1,3]", "$[0,1,-2]", "$[-2:]",
]  # fmt: skip


@pytest.mark.parametrize("text", FILTERS)
def test_pick_line_matches_the_full_parser(text: str) -> None:
    """The quote-free fast cuts give what parse, pick and format give, on random rows."""
    rng = random.Random(text)
    picker = ColumnPicker(parse_path(text))
    for _ in range(400):
        fields = [rng.choice(FIELDS) for _ in range(rng.randrange(1, 7))]
        line = format_row(fields)
        try:
            expected = format_row(picker.pick(fields))
        except PathMiss:
            with pytest.raises(PathMiss):
                picker.pick_line(line)
            continue
        assert picker.pick_line(line) == expected, (text, line)


def test_agrees_with_python_csv() -> None:
    rng = random.Random(5)
    for _ in range(300):
        fields = [rng.choice(FIELDS[:-1]).decode() for _ in range(rng.randrange(2, 6))]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(fields)
        line = buffer.getvalue().encode()[:-1]
        assert format_row([field.encode() for field in fields]) == line
        assert parse_row(line) == [field.encode() for field in fields]


@pytest.mark.parametrize("text", FILTERS)
def test_pick_lines_matches_pick_line(text: str) -> None:
    """Lists cut together (one width, a few quoted lines patched in) equal lines cut alone."""
    rng = random.Random("many" + text)
    picker = ColumnPicker(parse_path(text))
    plain = [f for f in FIELDS if not _NEEDS_QUOTES.search(f)]
    for _ in range(60):
        width = rng.randrange(1, 9)
        lines = []
        for _ in range(rng.randrange(1, 30)):
            pool = FIELDS if rng.random() < 0.1 else plain
            odd = rng.random() < 0.05
            fields = [rng.choice(pool) for _ in range(width + (1 if odd else 0))]
            lines.append(format_row(fields))
        quote_free = not any(b'"' in x or b"\r" in x for x in lines)
        try:
            expected = [picker.pick_line(line) for line in lines]
        except PathMiss:
            with pytest.raises(PathMiss):
                picker.pick_lines(lines, quote_free)
            continue
        assert picker.pick_lines(lines, quote_free) == expected, (text, lines)
        assert picker.pick_lines(lines) == expected
