"""The JSONPath subset SageMaker's DataProcessing accepts (docs/design.md §2.5), parsed once a job.

Grammar, after the leading ``$`` (the whole record)::

    step     := "." name | "." "*" | "." bracket | bracket
    bracket  := "[" "*" "]"
              | "[" quoted ("," quoted)* "]"           quoted: 'name' or "name"
              | "[" item ("," item)* "]"               item: int | [int] ":" [int]

Indexes may be negative (``-1`` is the last element). A slice ``[start:end]`` includes
its end (decision, README DataProcessing: SageMaker's guide reads ``$[1:4]`` as columns 2 to 5); an
omitted start is the first element, an omitted end the last, and a slice reaching past
the array is clipped. A filter holds at most one slice, and a list of names
(``['id','SageMakerOutput']``, which yields an object of those keys) must end it.
Anything else — recursive descent, filter expressions, slice steps, functions — fails
at parse time with the position of the problem.

Evaluation, per record: while every step picks one value (``$.a[0]``) the result is that
value, and a step that finds nothing (a missing key, a name asked of an array) is an
error naming the filter. After a step that picks several (``*``, a slice, an index list)
the result is a list, and later steps skip the values they do not fit; an index missing
from an array is an error in every case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.errors import BtAgentError, UsageError

MAX_CHARS = 63  # SageMaker's limit on InputFilter and OutputFilter

# Characters that end a dotted name; anything else may be in one, as in JSON keys.
_NAME_STOP = frozenset(".[]'\"*,()?@ \t\r\n")


class PathSyntaxError(UsageError, ValueError):
    """A filter outside the subset; ``position`` is the 0-based index of the problem."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        rest = text[position : position + 12] + ("..." if len(text) > position + 12 else "")
        where = f'"{rest}"' if rest else "the end"
        super().__init__(f"{reason} (at character {position + 1}: {where})")


class PathMiss(BtAgentError, ValueError):
    """A filter that does not fit a record: the message says which step and why."""


# ----------------------------------------------------------------------------- steps


class Slice:
    """``[start:end]`` with an inclusive end; ``None`` for an omitted bound."""

    __slots__ = ("start", "end")

    def __init__(self, start: int | None, end: int | None) -> None:
        self.start = start
        self.end = end

    def indexes(self, length: int) -> range:
        start = 0 if self.start is None else self.start
        end = length - 1 if self.end is None else self.end
        if start < 0:
            start = max(start + length, 0)
        if end < 0:
            end += length
        return range(start, min(end, length - 1) + 1)

    def __str__(self) -> str:
        return f"{'' if self.start is None else self.start}:{'' if self.end is None else self.end}"


Item = int | Slice


class Step:
    """One step of a path: a key, several keys, indexes and a slice, or ``*``."""

    __slots__ = ("kind", "keys", "items", "definite")

    def __init__(self, kind: str, keys: tuple[str, ...] = (), items: tuple[Item, ...] = ()) -> None:
        self.kind = kind  # "key", "keys", "index", "wild"
        self.keys = keys
        self.items = items
        single_index = len(items) == 1 and isinstance(items[0], int)
        # Definite: picks one value out of one value (["a","b"] builds one object).
        self.definite = kind in ("key", "keys") or (kind == "index" and single_index)

    def __str__(self) -> str:
        if self.kind == "wild":
            return "[*]"
        if self.kind in ("key", "keys"):
            return "[" + ",".join(repr(key) for key in self.keys) + "]"
        return "[" + ",".join(str(item) for item in self.items) + "]"

    def positions(self, length: int, noun: str = "element") -> list[int]:
        """The array indexes an index step picks, in order; ``PathMiss`` if one is missing."""
        if self.kind == "wild":
            return list(range(length))
        found: list[int] = []
        for item in self.items:
            if isinstance(item, Slice):
                found.extend(item.indexes(length))
                continue
            index = item + length if item < 0 else item
            if not 0 <= index < length:
                plural = "" if length == 1 else "s"
                raise PathMiss(
                    f"{self} asks for index {item}, but there are only {length} {noun}{plural}"
                )
            found.append(index)
        return found

    def one(self, value: object) -> object:
        """Apply a definite step to one value."""
        if self.kind in ("key", "keys"):
            if not isinstance(value, dict):
                raise PathMiss(f"{self} asks for a key of {_kind(value)}")
            if self.kind == "keys":
                return {key: value[key] for key in self.keys if key in value}
            key = self.keys[0]
            if key not in value:
                raise PathMiss(f"there is no key {key!r}")
            return value[key]
        if not isinstance(value, list):
            raise PathMiss(f"{self} asks for an index of {_kind(value)}")
        return value[self.positions(len(value))[0]]

    def many(self, value: object, strict: bool) -> list[object]:
        """Apply a step after one that picked several values, or as the first such step.

        ``strict``: no earlier step picked several, so an index asked of something that
        is not an array is an error; otherwise values a step does not fit are skipped.
        """
        kind = self.kind
        if kind == "wild":
            if isinstance(value, dict):
                return list(value.values())
            return list(value) if isinstance(value, list) else []
        if kind == "index":
            if isinstance(value, list):
                return [value[index] for index in self.positions(len(value))]
            if strict:
                raise PathMiss(f"{self} asks for an index of {_kind(value)}")
            return []
        if isinstance(value, dict) and (kind == "keys" or self.keys[0] in value):
            return [self.one(value)]
        return []


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _kind(value: object) -> str:
    return "null" if value is None else _KINDS.get(type(value), "a number")


# ----------------------------------------------------------------------------- paths


class JsonPath:
    """A parsed filter. ``evaluate`` applies it to a decoded JSON value."""

    __slots__ = ("text", "steps", "is_root", "_columns")

    def __init__(self, text: str, steps: Sequence[Step]) -> None:
        self.text = text
        self.steps = tuple(steps)
        self.is_root = not self.steps
        self._columns: dict[int, tuple[int, ...]] = {}

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    @property
    def is_columnar(self) -> bool:
        """Whether the filter picks array elements only (CSV rows): ``$``, ``$[..]``, ``$.*``."""
        return len(self.steps) <= 1 and all(step.kind in ("index", "wild") for step in self.steps)

    def compile(self) -> Callable[[object], object]:
        """``evaluate``, with a quicker way for the usual one-step filters (same results)."""
        evaluate = self.evaluate
        if self.is_root:
            return _same
        step = self.steps[0]
        if len(self.steps) > 1 or step.kind not in ("key", "keys"):
            return evaluate
        keys = step.keys
        if step.kind == "keys":

            def pick_keys(value: object) -> object:
                if type(value) is dict:
                    return {key: value[key] for key in keys if key in value}
                return evaluate(value)  # raises the precise PathMiss

            return pick_keys
        key = keys[0]

        def pick_key(value: object) -> object:
            if type(value) is dict and key in value:
                return value[key]
            return evaluate(value)  # raises the precise PathMiss

        return pick_key

    def evaluate(self, value: object) -> object:
        """The part of ``value`` the filter selects (a list once a step picked several)."""
        steps = self.steps
        i = 0
        while i < len(steps) and steps[i].definite:
            value = steps[i].one(value)
            i += 1
        if i == len(steps):
            return value
        values = steps[i].many(value, True)
        for step in steps[i + 1 :]:
            picked: list[object] = []
            for item in values:
                picked.extend(step.many(item, False))
            values = picked
        return values

    def columns(self, count: int) -> tuple[int, ...]:
        """For a columnar filter: the indexes it picks from a row of ``count`` fields."""
        found = self._columns.get(count)
        if found is None:
            if not self.steps:
                found = tuple(range(count))
            else:
                found = tuple(self.steps[0].positions(count, "column"))
            if len(self._columns) < 64:  # rows of a file have few distinct widths
                self._columns[count] = found
        return found

    def inclusive_slice_note(self) -> str | None:
        """A sentence for the log when the filter has a slice with an explicit end."""
        for step in self.steps:
            for item in step.items:
                if isinstance(item, Slice) and item.end is not None:
                    return (
                        f"{self.text}: the slice [{item}] includes its end index {item.end} "
                        "(SageMaker's guide reads $[1:4] as the 2nd to 5th columns)"
                    )
        return None


def _same(value: object) -> object:
    return value


def parse_path(text: str) -> JsonPath:
    """Parse a filter; ``PathSyntaxError`` with the position of the first problem."""
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.sliced = False  # a filter holds one slice at most

    def fail(self, reason: str, at: int | None = None) -> PathSyntaxError:
        return PathSyntaxError(self.text, self.i if at is None else at, reason)

    def parse(self) -> JsonPath:
        text = self.text
        if len(text) > MAX_CHARS:
            raise self.fail(f"a filter has at most {MAX_CHARS} characters", MAX_CHARS)
        if not text.startswith("$"):
            raise self.fail("a JSONPath filter starts with $ (the whole record), as in $ or $[1:]")
        self.i = 1
        steps: list[Step] = []
        while self.i < len(text):
            if steps and steps[-1].kind == "keys":
                raise self.fail("a list of names ['a','b'] must end the filter")
            char = text[self.i]
            if char == ".":
                steps.append(self.dotted())
            elif char == "[":
                steps.append(self.bracket())
            else:
                raise self.fail(f"expected . or [ here, found {char!r}")
        return JsonPath(text, steps)

    def dotted(self) -> Step:
        text = self.text
        self.i += 1
        if self.i == len(text):
            raise self.fail("a name, * or [ must follow .")
        char = text[self.i]
        if char == ".":
            raise self.fail("recursive descent (..) is not supported", self.i - 1)
        if char == "*":
            self.i += 1
            return Step("wild")
        if char == "[":
            return self.bracket()
        start = self.i
        while self.i < len(text) and text[self.i] not in _NAME_STOP:
            self.i += 1
        if self.i == start:
            raise self.fail(f"a name must follow ., found {char!r}")
        if self.i < len(text) and text[self.i] == "(":
            raise self.fail("functions are not supported", start)
        return Step("key", (text[start : self.i],))

    def bracket(self) -> Step:
        self.i += 1  # past "["
        self.spaces()
        char = self.peek()
        if char == "*":
            self.i += 1
            step = Step("wild")
        elif char in ("'", '"'):
            keys = [self.quoted()]
            while self.comma():
                keys.append(self.quoted())
            step = Step("key" if len(keys) == 1 else "keys", tuple(keys))
        elif char in ("?", "("):
            raise self.fail("filter and script expressions are not supported")
        else:
            items = [self.item()]
            while self.comma():
                items.append(self.item())
            step = Step("index", items=tuple(items))
        self.spaces()
        if self.peek() != "]":
            raise self.fail("expected , or ] here")
        self.i += 1
        return step

    def item(self) -> Item:
        self.spaces()
        begin = self.i
        start = self.integer()
        if self.peek() != ":":
            if start is None:
                raise self.fail("expected an index, a slice start:end, * or a quoted name")
            return start
        if self.sliced:
            raise self.fail("only one slice [start:end] is allowed per filter", begin)
        self.sliced = True
        self.i += 1
        end = self.integer()
        if self.peek() == ":":
            raise self.fail("a slice takes no step; write [start:end]")
        return Slice(start, end)

    def integer(self) -> int | None:
        self.spaces()
        text, start = self.text, self.i
        if self.peek() == "-":
            self.i += 1
        digits = self.i
        while self.i < len(text) and "0" <= text[self.i] <= "9":
            self.i += 1
        if self.i == digits:
            if self.i != start:
                raise self.fail("a digit must follow -")
            return None
        value = int(text[start : self.i])
        self.spaces()
        return value

    def quoted(self) -> str:
        self.spaces()
        text, quote = self.text, self.peek()
        if quote not in ("'", '"'):
            raise self.fail("expected a quoted name, as in ['id']")
        opened = self.i
        self.i += 1
        out: list[str] = []
        while self.i < len(text):
            char = text[self.i]
            if char == "\\" and self.i + 1 < len(text):
                out.append(text[self.i + 1])
                self.i += 2
                continue
            self.i += 1
            if char == quote:
                self.spaces()
                return "".join(out)
            out.append(char)
        raise self.fail(f"this name's closing {quote} is missing", opened)

    def comma(self) -> bool:
        self.spaces()
        found = self.peek() == ","
        self.i += found
        return found

    def spaces(self) -> None:
        while self.i < len(self.text) and self.text[self.i] == " ":
            self.i += 1

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""
