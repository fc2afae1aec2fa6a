"""JSONPath filters (agent/job/jsonpath.py, docs/design.md §2.5): parse, print, slice, apply.

* A filter drawn as a tree of steps and written out (dotted or bracketed, either quote,
  spaces where the grammar allows them) parses back to that tree; a filter text that
  parses, written out again (by this test's printer, and by the module's own ``Step``
  printer, which error messages use), parses to the same tree.
* Any text parses or raises ``PathSyntaxError`` with a position inside the text.
* A slice picks exactly the indexes its inclusive, clipped reading says, never one out
  of range, for any bounds and any length.
* Applied to any JSON value a filter returns a value or raises ``PathMiss``, nothing else;
  ``compile`` gives what ``evaluate`` gives; a columnar filter's columns are in range.
"""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from agent.job import JsonPath, PathMiss, PathSyntaxError, parse_path
from agent.job.jsonpath import MAX_CHARS, Slice

NAME_STOP = set(".[]'\"*,()?@ \t\r\n")  # what ends a dotted name (the grammar's doc)

# A step: ("key", (name,)), ("keys", (a, b, ...)), ("index", items) or ("wild", ()).
# An index item: an int, or ("slice", start|None, end|None).
Tree = tuple[tuple[str, tuple[Any, ...]], ...]

names = st.text(st.sampled_from("abc01_-é$:'\"\\ .[]*,\t"), min_size=0, max_size=5)
ints = st.integers(-6, 6) | st.integers(-(10**12), 10**12)
slices = st.tuples(st.just("slice"), st.none() | ints, st.none() | ints)


@st.composite
def trees(draw: st.DrawFn, names: st.SearchStrategy[str] = names) -> Tree:
    steps: list[tuple[str, tuple[Any, ...]]] = []
    sliced = False
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["key", "index", "wild"]))
        if kind == "key":
            steps.append(("key", (draw(names),)))
        elif kind == "wild":
            steps.append(("wild", ()))
        else:
            items = draw(st.lists(ints, min_size=1, max_size=3))
            if not sliced and draw(st.booleans()):  # one slice a filter, anywhere in a list
                items.insert(draw(st.integers(0, len(items))), draw(slices))
                sliced = True
            steps.append(("index", tuple(items)))
    if draw(st.integers(0, 3)) == 0:  # a list of names ends the filter
        steps.append(("keys", tuple(draw(st.lists(names, min_size=2, max_size=3)))))
    return tuple(steps)


def tree_of(path: JsonPath) -> Tree:
    def item(value: Any) -> Any:
        return ("slice", value.start, value.end) if isinstance(value, Slice) else value

    return tuple(
        (step.kind, step.keys if step.kind in ("key", "keys") else tuple(map(item, step.items)))
        for step in path.steps
    )


def _quoted(name: str, quote: str) -> str:
    return quote + name.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def write(tree: Tree, style: st.DataObject | None = None) -> str:
    """The filter text of ``tree``; with ``style``, each free choice drawn from it."""

    def pick(choices: list[str]) -> str:
        return choices[0] if style is None else style.draw(st.sampled_from(choices))

    def gap() -> str:
        return "" if style is None else style.draw(st.sampled_from(["", "", " ", "  "]))

    text = "$"
    for kind, values in tree:
        if kind == "wild":
            text += pick(["[*]", ".*", f"[{gap()}*{gap()}]", ".[*]"])
        elif kind == "key" and values[0] and not NAME_STOP & set(values[0]):
            text += pick([f".{values[0]}", "[" + _quoted(values[0], "'") + "]"])
        elif kind in ("key", "keys"):
            quote = pick(["'", '"'])
            inner = f"{gap()},{gap()}".join(_quoted(name, quote) for name in values)
            text += pick(["", "."]) + f"[{gap()}{inner}{gap()}]"
        else:
            shown = [
                f"{'' if v[1] is None else v[1]}{gap()}:{gap()}{'' if v[2] is None else v[2]}"
                if isinstance(v, tuple)
                else str(v)
                for v in values
            ]
            text += pick(["", "."]) + f"[{gap()}" + f"{gap()},{gap()}".join(shown) + f"{gap()}]"
    return text


# ----------------------------------------------------------------------------- round trips


@given(tree=trees(), style=st.data())
def test_a_written_tree_parses_back(tree: Tree, style: st.DataObject) -> None:
    text = write(tree, style)
    if len(text) > MAX_CHARS:
        try:
            parse_path(text)
        except PathSyntaxError as error:
            assert error.position == MAX_CHARS
        else:
            raise AssertionError(f"{text!r} is over {MAX_CHARS} characters yet parsed")
        return
    assert tree_of(parse_path(text)) == tree, text


filter_texts = st.one_of(
    st.text(st.sampled_from("$.[]*'\",:- 0123456789abc()?@\\"), max_size=30).map(lambda t: "$" + t),
    st.text(max_size=20),
    trees().map(write),
)


@given(text=filter_texts)
def test_any_text_parses_or_fails_with_a_position(text: str) -> None:
    try:
        path = parse_path(text)
    except PathSyntaxError as error:
        assert 0 <= error.position <= len(text)
        assert str(error)
        return
    tree = tree_of(path)
    again = write(tree)
    if len(again) <= MAX_CHARS:
        assert tree_of(parse_path(again)) == tree, (text, again)
    # The module's own printer (used in PathMiss messages), for printable names: it writes
    # Python's repr of a name, which escapes the others.
    if all(name.isprintable() for _, values in tree for name in values if isinstance(name, str)):
        shown = "$" + "".join(str(step) for step in path.steps)
        if len(shown) <= MAX_CHARS:
            assert tree_of(parse_path(shown)) == tree, (text, shown)


# ----------------------------------------------------------------------------- slices


def reference_slice(start: int | None, end: int | None, length: int) -> list[int]:
    """§2.5 and the README: an inclusive end, negative counted from the end, clipped."""
    first = 0 if start is None else (start + length if start < 0 else start)
    last = length - 1 if end is None else (end + length if end < 0 else end)
    return [i for i in range(length) if first <= i <= last]


@given(start=st.none() | ints, end=st.none() | ints, length=st.integers(0, 40))
def test_slices_pick_in_range(start: int | None, end: int | None, length: int) -> None:
    picked = list(Slice(start, end).indexes(length))
    assert all(0 <= i < length for i in picked)
    assert picked == reference_slice(start, end, length)


# ----------------------------------------------------------------------------- applying

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | names,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.sampled_from("abc0"), kids),
    max_leaves=12,
)
# Names that the documents' keys are (so that steps find something), and any names.
document_trees = trees(st.sampled_from("abc0")) | trees()


@given(tree=document_trees, document=documents, count=st.integers(0, 12))
def test_applying_raises_only_path_misses(tree: Tree, document: Any, count: int) -> None:
    text = write(tree)
    assume(len(text) <= MAX_CHARS)
    path = parse_path(text)
    try:
        expected: Any = path.evaluate(document)
    except PathMiss:
        expected = PathMiss
    try:
        compiled: Any = path.compile()(document)
    except PathMiss:
        compiled = PathMiss
    assert compiled == expected
    if path.is_columnar:
        try:
            columns = path.columns(count)
        except PathMiss:
            return
        assert all(0 <= i < count for i in columns)
