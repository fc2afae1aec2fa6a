"""The JSONPath subset (docs/design.md §2.5): what parses, what each filter selects, the errors."""

from __future__ import annotations

import pytest

from agent.dataproc import PathMiss, PathSyntaxError, parse_path

RECORD = {
    "id": "r-7",
    "features": [0.5, 1.5, 2.5],
    "meta": {"source": "web", "rank": 3},
    "items": [{"n": 1}, {"m": 2}, {"n": 3}],
    "odd key": True,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$", RECORD),
        ("$.features", [0.5, 1.5, 2.5]),  # the documented InputFilter example
        ("$['id','features']", {"id": "r-7", "features": [0.5, 1.5, 2.5]}),
        ('$["id", "meta"]', {"id": "r-7", "meta": {"source": "web", "rank": 3}}),
        ("$['odd key']", True),
        ("$.meta.source", "web"),
        ("$.meta['rank']", 3),
        ("$.meta.['source','rank']", {"source": "web", "rank": 3}),  # the guide's .[ form
        ("$.meta.*", ["web", 3]),
        ("$.meta[*]", ["web", 3]),
        ("$.features[0]", 0.5),
        ("$.features[-1]", 2.5),
        ("$.features[0,-1]", [0.5, 2.5]),
        ("$.features[1:]", [1.5, 2.5]),
        ("$.features[:1]", [0.5, 1.5]),  # end included
        ("$.features[-2:]", [1.5, 2.5]),
        ("$.features[0:9]", [0.5, 1.5, 2.5]),  # a slice is clipped to the array
        ("$.features[2:1]", []),
        ("$.features[ 0 , 2 ]", [0.5, 2.5]),
        ("$.items[*].n", [1, 3]),  # after several values, misses are skipped
        ("$.items[0,2].n", [1, 3]),
        ("$.items[1:]['n','m']", [{"m": 2}, {"n": 3}]),
        ("$['id','missing']", {"id": "r-7"}),  # a list of names keeps those present
    ],
)
def test_selection(text: str, expected: object) -> None:
    assert parse_path(text).evaluate(RECORD) == expected


def test_documented_examples_as_columns() -> None:
    # $[1:] drops the ID column; $[0,5:] keeps it and the 6th column onwards.
    assert parse_path("$[1:]").columns(5) == (1, 2, 3, 4)
    assert parse_path("$[0,5:]").columns(8) == (0, 5, 6, 7)
    assert parse_path("$[0,5:]").columns(3) == (0,)
    # The guide: $[1:4] is the 2nd to the 5th column, [:5] the 1st to the 6th.
    assert parse_path("$[1:4]").columns(10) == (1, 2, 3, 4)
    assert parse_path("$[:5]").columns(10) == (0, 1, 2, 3, 4, 5)
    assert parse_path("$[0,-1]").columns(6) == (0, 5)
    assert parse_path("$[*]").columns(3) == parse_path("$.*").columns(3) == (0, 1, 2)
    assert parse_path("$").columns(2) == (0, 1)
    assert parse_path("$[3]").columns(4) == (3,)


def test_properties() -> None:
    root = parse_path("$")
    assert root.is_root and root.is_columnar
    assert parse_path("$[0,5:]").is_columnar and not parse_path("$[0,5:]").is_root
    assert not parse_path("$['a','b']").is_columnar
    assert not parse_path("$[0][1]").is_columnar
    assert parse_path("$[1:4]").inclusive_slice_note() is not None
    assert parse_path("$[1:]").inclusive_slice_note() is None


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("$[1:2:3]", 6, "no step"),
        ("$[1:][2:]", 7, "only one slice"),
        ("$[0:1,3:]", 7, "only one slice"),
        ("$..id", 2, "recursive descent"),
        ("$[?(@.a > 1)]", 3, "filter"),
        ("$.length()", 3, "functions"),
        ("id", 1, "starts with $"),
        ("", 1, "starts with $"),
        ("$id", 2, "expected . or ["),
        ("$.", 3, "must follow ."),
        ("$[]", 3, "expected an index"),
        ("$[1", 4, "expected , or ]"),
        ("$['a", 3, "closing ' is missing"),
        ("$[*,1]", 4, "expected , or ]"),
        ("$['a','b'].c", 11, "must end the filter"),
        ("$[-]", 4, "digit must follow"),
        ("$[1.5]", 4, "expected , or ]"),
        ("$." + "a" * 62, 64, "at most 63"),
    ],
)
def test_rejected_with_the_position(text: str, column: int, words: str) -> None:
    with pytest.raises(PathSyntaxError) as caught:
        parse_path(text)
    assert caught.value.position == column - 1
    assert words in str(caught.value)
    assert f"at character {column}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "value", "words"),
    [
        ("$.missing", RECORD, "no key 'missing'"),
        ("$.features.x", RECORD, "asks for a key of an array"),
        ("$.features[3]", RECORD, "index 3, but there are only 3 elements"),
        ("$.features[0,-4]", RECORD, "index -4"),
        ("$.id[0]", RECORD, "asks for an index of a string"),
        ("$[0,1]", {"a": 1}, "asks for an index of an object"),
        ("$['a','b']", [1], "asks for a key of an array"),
        ("$.items[*][5]", {"items": [[1, 2]]}, "index 5"),  # indexes are never skipped
    ],
)
def test_misses_name_the_step(text: str, value: object, words: str) -> None:
    with pytest.raises(PathMiss, match=words.replace("[", r"\[")):
        parse_path(text).evaluate(value)


def test_column_misses_speak_of_columns() -> None:
    with pytest.raises(PathMiss, match=r"\[0,7\] asks for index 7, but there are only 6 columns"):
        parse_path("$[0,7]").columns(6)
    with pytest.raises(PathMiss, match="only 0 columns"):
        parse_path("$[0]").columns(0)
