"""A manifest (``ManifestFile``): its JSON shape, its prefix and keys, and what makes one
unusable (every problem is listed, by array index, in one ``ManifestError``).

Pure: reading the manifest and looking up its entries is ``agent.storage.inputs``'s.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import orjson

from agent.job import DataUri, parse_data_uri
from agent.storage.base import InputError

MAX_LISTED_PROBLEMS = 10


class ManifestError(InputError):
    """A manifest that cannot be used; ``problems`` lists each one by array index."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            shown += f"; and {more} more"
        super().__init__(f"the manifest {where} is not usable: {shown}")
        self.problems = tuple(problems)


def parse_manifest(data: bytes, where: DataUri) -> tuple[DataUri, list[str]]:
    """The prefix and the relative keys of a manifest; ``ManifestError`` lists every problem.

    A local manifest may name a local prefix (absolute, ``file://`` or relative to the
    manifest's directory) or an S3 one; an S3 manifest must name an ``s3://`` prefix.
    """
    shape = 'a JSON array whose first element is {"prefix": "s3://bucket/prefix/"}'
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ManifestError(str(where), [f"it is not valid JSON ({error})"]) from None
    if not isinstance(document, list) or not document:
        raise ManifestError(str(where), [f"it must be {shape}, followed by keys"])
    problems: list[str] = []
    prefix: DataUri | None = None
    head = document[0]
    text = head.get("prefix") if isinstance(head, dict) and len(head) == 1 else None
    if not isinstance(text, str):
        problems.append(f'element 0 must be {{"prefix": "s3://bucket/prefix/"}}, not {_show(head)}')
    else:
        try:
            prefix = parse_data_uri(text, posixpath.dirname(where.key) if where.is_local else "/")
        except ValueError as error:
            problems.append(f"element 0: the prefix is not usable: {error}")
        else:
            if not where.is_local and prefix.is_local:
                problems.append(f"element 0: an S3 manifest needs an s3:// prefix, not {text!r}")
    keys: list[str] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(document[1:], start=1):
        if not isinstance(entry, str) or not entry or "\x00" in entry:
            problems.append(f"element {index} must be a non-empty key string, not {_show(entry)}")
        elif entry in seen:
            problems.append(f"element {index} repeats element {seen[entry]} ({entry!r})")
        else:
            seen[entry] = index
        keys.append(entry if isinstance(entry, str) else "")
    if problems or prefix is None:
        raise ManifestError(str(where), problems)
    return prefix, keys


def _show(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def entry_keys(prefix: DataUri, entries: Sequence[str], where: DataUri) -> list[str]:
    """Each entry's object key; ``ManifestError`` if two entries name the same object.

    Under a local prefix keys are normalised paths, so ``f1.csv``, ``./f1.csv`` and
    ``sub/../f1.csv`` are one file: that is refused like an entry repeated word for word.
    """
    if not prefix.is_local:
        return [prefix.key + entry for entry in entries]
    keys = [posixpath.normpath(prefix.key + entry) for entry in entries]
    seen: dict[str, int] = {}
    problems = []
    for position, key in enumerate(keys):
        first = seen.setdefault(key, position)
        if first != position:
            problems.append(
                f"element {position + 1} ({entries[position]!r}) names the same file as "
                f"element {first + 1} ({entries[first]!r}): file://{key}"
            )
    if problems:
        raise ManifestError(str(where), problems)
    return keys
