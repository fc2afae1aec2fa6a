"""Secrets kept out of everything the agent writes: log lines, the summary, state objects.

A run installs one ``Redactor`` (``install``) made of the job's ``Environment`` values and
the credentials in the agent's own environment (``secrets_of``). From then on:

* the log formatters of ``agent.log`` pass every line through ``scrub`` (``scrub_json`` on
  the serialised JSON line too), and ``RedactingFilter`` does the same on Python's
  last-resort handler (libraries' warnings), as ``sys.excepthook`` does on a traceback
  nothing caught;
* ``agent.coordination.state.dumps`` serialises every state object, and the runner the summary it
  writes to stdout or ``--summary``, with ``dumps_scrubbed`` (``scrub_state`` without a
  second serialisation), which rewrites the free-text fields
  (``FailureReason`` and any key ending in ``Reason``, ``Error`` or ``Message``) and nothing
  else: URIs, keys, ETags and run ids name data that the agent (or a program reading the
  summary) looks up, and changing them would break resume. Free text is where foreign text
  (a model's output, an answer's excerpt, an error message) ends up.

Each secret is replaced by ``[redacted]`` where it appears as is, as JSON escapes it (with
or without ``ensure_ascii``) and as ``repr`` shows it; in serialised JSON only the escaped
forms are replaced, so the JSON stays valid. Values shorter than
``MIN_SECRET_CHARS`` are left alone: ``1``, ``true`` or ``INFO`` would garble every
message, and no credential is that short.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import orjson

__all__ = [
    "CREDENTIAL_VARIABLES",
    "MASK",
    "MIN_SECRET_CHARS",
    "RedactingFilter",
    "Redactor",
    "current",
    "dumps_scrubbed",
    "is_credential_name",
    "install",
    "scrub",
    "scrub_json",
    "scrub_state",
    "secrets_of",
]

MASK = "[redacted]"
MIN_SECRET_CHARS = 6

# The agent's own variables whose values are credentials, whatever their name says...
# (AWS_ACCESS_KEY_ID names a key, as AWS's own error messages do, and is no secret by
# itself: it is never passed to the model, but not redacted.)
CREDENTIAL_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)
# ...and any whose name says it holds one (GITHUB_TOKEN, DB_PASSWORD, HF_API_KEY, ...).
_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE_?KEY|API_?KEY",
    re.IGNORECASE,
)
_TEXT_KEY = re.compile(r"(?:Reason|Error|Message)\Z")


def _json_escaped(text: str) -> set[str]:
    return {
        orjson.dumps(text).decode()[1:-1],  # non-ASCII kept as UTF-8
        json.dumps(text, ensure_ascii=True)[1:-1],  # non-ASCII as \\uXXXX escapes
    }


def _forms(secret: str) -> tuple[set[str], set[str]]:
    """The ways ``secret`` can appear in text the agent writes, and inside JSON strings."""
    in_text = {secret, repr(secret)[1:-1], *_json_escaped(secret)}  # repr: quoted with !r
    in_json = {escaped for form in in_text for escaped in _json_escaped(form)}
    return in_text, in_json


def _pattern(forms: set[str]) -> re.Pattern[str] | None:
    # Longest first, so a secret that contains another is replaced whole.
    ordered = sorted(forms, key=lambda form: (-len(form), form))
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


class Redactor:
    """Replaces every known secret (in each of its written forms) by ``MASK``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        in_text: set[str] = set()
        in_json: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS:
                text_forms, json_forms = _forms(secret)
                in_text |= text_forms
                in_json |= json_forms
        self.active = bool(in_text)
        self._text = _pattern(in_text)
        # Inside JSON only the escaped forms occur: a raw form holding a quote could match
        # across the end of one string and the start of the next.
        self._json = _pattern(in_json)
        self._json_bytes = sorted({form.encode() for form in in_json}, key=len, reverse=True)

    def text(self, text: str) -> str:
        """Plain text (a log line, a message) without the secrets."""
        return text if self._text is None else self._text.sub(MASK, text)

    def json_text(self, text: str) -> str:
        """Serialised JSON without the secrets; it stays valid JSON."""
        return text if self._json is None else self._json.sub(MASK, text)

    def found_in(self, data: bytes) -> bool:
        """Whether serialised JSON holds a secret (a quick test before walking a document)."""
        return any(form in data for form in self._json_bytes)

    def state(self, document: Any) -> Any:
        """``document`` with its free-text fields scrubbed (a copy where anything changed)."""
        return self._walk(document, text=False) if self.active else document

    def _walk(self, value: Any, *, text: bool) -> Any:
        if isinstance(value, str):
            return self.text(value) if text else value
        if isinstance(value, Mapping):
            return {
                (self.text(key) if text and isinstance(key, str) else key): self._walk(
                    item, text=text or bool(_TEXT_KEY.search(str(key)))
                )
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._walk(item, text=text) for item in value]
        return value


def is_credential_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a credential."""
    return name in CREDENTIAL_VARIABLES or bool(_SECRET_NAME.search(name))


def secrets_of(environment: Mapping[str, str], agent_environment: Mapping[str, str]) -> list[str]:
    """Every job ``Environment`` value, and the agent's credential variables' values."""
    found = list(environment.values())
    for name, value in agent_environment.items():
        if is_credential_name(name):
            found.append(value)
    return found


_current = Redactor()


def install(redactor: Redactor) -> None:
    """Make ``redactor`` the one every writer of this process uses (a run calls it first)."""
    global _current
    _current = redactor
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook  # a traceback nothing caught, on its way to stderr
    if logging.lastResort is not None and not any(
        isinstance(f, RedactingFilter) for f in logging.lastResort.filters
    ):
        logging.lastResort.addFilter(RedactingFilter())


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(_current.text("".join(traceback.format_exception(kind, error, tb))))


def current() -> Redactor:
    return _current


def scrub(text: str) -> str:
    """``text`` without the installed secrets."""
    return _current.text(text)


def scrub_json(text: str) -> str:
    """Serialised JSON without the installed secrets."""
    return _current.json_text(text)


def scrub_state(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state object with the installed secrets out of its free-text fields.

    Serialised and searched first: a document with no secret in it (the usual case, and a
    listing of a million files) is returned as it is, not walked.
    """
    if _current.active and _current.found_in(orjson.dumps(document)):
        scrubbed: Mapping[str, Any] = _current.state(document)
        return scrubbed
    return document


def dumps_scrubbed(document: Mapping[str, Any], option: int = 0) -> bytes:
    """``orjson.dumps(scrub_state(document), option=option)``, serialising it once when it
    holds no secret (the usual case)."""
    data = orjson.dumps(document, option=option)
    if _current.active and _current.found_in(data):
        data = orjson.dumps(_current.state(document), option=option)
    return data


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and traceback) without the installed secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _current.active:
            return True
        record.msg, record.args = _current.text(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _current.text(record.exc_text)
        return True
