"""A JSON document with one long list in it, serialised a piece at a time.

The job summaries hold one entry per file. Building every entry as a dict and then the
whole document with ``orjson.dumps`` holds the dicts and the output at once; here the
entries are serialised one by one, each as it comes, into pieces the caller writes (to a
file) or joins (into one ``bytearray``). The bytes are exactly those ``orjson.dumps``
gives for the whole document, compact or with ``OPT_INDENT_2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from agent.redact import dumps_scrubbed

_INDENT = orjson.OPT_INDENT_2


def document_pieces(
    document: Mapping[str, Any],
    key: str,
    items: Iterable[Mapping[str, Any]],
    *,
    indent: bool = False,
) -> Iterator[bytes]:
    """``document`` with ``items`` as the list at ``key`` (where ``key`` stands in it, its
    value ignored), as ``orjson.dumps`` would serialise it, in pieces; no trailing newline.

    Secrets are taken out of free text as ``agent.redact.scrub_state`` would (each item
    and the rest of the document on its own: the list's key is no free-text key).
    """
    keys = list(document)
    at = keys.index(key)
    before = {name: document[name] for name in keys[:at]}
    after = {name: document[name] for name in keys[at + 1 :]}
    option = _INDENT if indent else 0
    name = orjson.dumps(key)
    if indent:
        # {\n  "a": 1,\n  "Files": [\n    {\n      ...\n    },\n    ...\n  ],\n  "b": 2\n}
        yield dumps_scrubbed(before, _INDENT)[:-2] + b",\n  " if before else b"{\n  "
        yield name + b": ["
        count = 0
        for item in items:
            entry = dumps_scrubbed(item, _INDENT).replace(b"\n", b"\n    ")
            yield (b",\n    " if count else b"\n    ") + entry
            count += 1
        yield b"\n  ]" if count else b"]"
        yield b",\n" + dumps_scrubbed(after, _INDENT)[2:] if after else b"\n}"
        return
    yield dumps_scrubbed(before, option)[:-1] + b"," if before else b"{"
    yield name + b":["
    first = True
    for item in items:
        yield dumps_scrubbed(item, option) if first else b"," + dumps_scrubbed(item, option)
        first = False
    yield b"]," + dumps_scrubbed(after, option)[1:] if after else b"]}"
