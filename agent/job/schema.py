"""The job document's shape, and the building blocks that check it.

The shape: which keys SageMaker defines at each level (spelled exactly as SageMaker
does), which are required, which are accepted but ignored, and the patterns values
must match. The building blocks: problems with JSON paths, and typed field readers.

``Checker`` walks a decoded JSON document and *collects* problems instead of raising on
the first one, so a user sees every mistake in one run. Each reader returns the value
when it is acceptable and ``None`` otherwise (after recording why), which lets the
caller keep going and fill in defaults. Messages name the JSON path and what is allowed.
These readers quote the bad value, so they are never used under ``Environment``, whose
values may be secrets; that map has its own reader, which names keys only.

The module is a little over 400 lines because the readers and the tables of keys and limits
they check against are one vocabulary, read together.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

import orjson

from agent.errors import UsageError

_S = TypeVar("_S", bound=str)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL_CATEGORIES = frozenset(("Cc", "Zl", "Zp"))

URI_FORMS = "use s3://bucket/prefix, file:///absolute/path or a local path"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a job file: where (a JSON path, ``$.TransformInput``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class JobError(UsageError):
    """The job file cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Collection[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def child(path: str, key: str | int) -> str:
    """The JSON path of ``key`` under ``path``: ``$.A.B``, ``$.A[2]``, ``$.Environment["a b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{quote(key, limit=200)}]"


def quote(value: object, *, limit: int = 80) -> str:
    """A short, printable rendering of a (non-secret) JSON value for an error message."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for "expected X, found Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json never produces anything else


def closest(word: str, choices: Collection[str]) -> str | None:
    """The choice a mistyped ``word`` most likely meant: same spelling in another case first."""
    folded = {choice.casefold(): choice for choice in choices}
    if word.casefold() in folded:
        return folded[word.casefold()]
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _listing(choices: Collection[str]) -> str:
    return ", ".join(sorted(choices))


class JsonObject(dict[str, object]):
    """A decoded JSON object that remembers keys it held more than once (the last one won)."""

    duplicate_keys: tuple[str, ...] = ()


def json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` for ``json.loads`` that keeps note of duplicate keys."""
    result = JsonObject(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for key, _ in pairs:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
        result.duplicate_keys = tuple(repeated)
    return result


class Checker:
    """Collects problems and ignored-field paths while a job document is read."""

    def __init__(self, hints: Mapping[str, str] | None = None) -> None:
        # hints[key]: what to write when the required field ``key`` is missing.
        self.hints: Mapping[str, str] = hints or {}
        self.problems: list[Problem] = []
        self.ignored: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def wrong_type(self, path: str, expected: str, value: object) -> None:
        hint = "; to leave the field out, remove the key" if value is None else ""
        self.problem(path, f"expected {expected}, found {type_name(value)}{hint}")

    # ------------------------------------------------------------------ objects

    def obj(
        self,
        value: object,
        path: str,
        *,
        fields: Collection[str],
        required: Collection[str] = (),
        ignored: Collection[str] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> dict[str, object] | None:
        """Check that ``value`` is an object with only known keys; return the known ones.

        Keys in ``ignored`` are accepted, recorded in ``self.ignored`` and dropped.
        ``elsewhere`` maps a key name to the path where it belongs, so a key put at the
        wrong level gets "belongs under ..." instead of a bare "unknown key".
        """
        if not isinstance(value, dict):
            self.wrong_type(path, "an object", value)
            return None
        self.duplicates(value, path)
        known: dict[str, object] = {}
        for key, item in value.items():
            if key in fields:
                known[key] = item
            elif key in ignored:
                self.ignored.append(child(path, key))
            else:
                self.problem(child(path, key), self._unknown_key(key, path, fields, elsewhere))
        for key in required:
            if key not in value:
                hint = self.hints.get(key)
                message = "this required field is missing" + (f"; {hint}" if hint else "")
                self.problem(child(path, key), message)
        return known

    def duplicates(self, value: dict[str, object], path: str) -> None:
        """Report keys the JSON text gave twice in one object: readers disagree on the winner."""
        for key in getattr(value, "duplicate_keys", ()):
            self.problem(child(path, key), "this key appears more than once; keep only one")

    @staticmethod
    def _unknown_key(
        key: str, path: str, fields: Collection[str], elsewhere: Mapping[str, str] | None
    ) -> str:
        message = f"unknown key; allowed keys here are {_listing(fields)}"
        guess = closest(key, fields)
        if guess is not None:
            return f'{message} (did you mean "{guess}"?)'
        home = (elsewhere or {}).get(key)
        if home is not None and home != path:
            return f"{message}; {key} belongs under {home}"
        return message

    # ------------------------------------------------------------------ scalars

    def string(
        self,
        fields: Mapping[str, object],
        key: str,
        path: str,
        *,
        max_chars: int,
        min_chars: int = 0,
    ) -> str | None:
        """A string field (absent gives ``None``); length bounds counted in characters."""
        if key not in fields:
            return None
        value, where = fields[key], child(path, key)
        if not isinstance(value, str):
            self.wrong_type(where, "a string", value)
            return None
        if not min_chars <= len(value) <= max_chars:
            bound = f"{min_chars} to {max_chars}" if min_chars else f"at most {max_chars}"
            self.problem(
                where, f"{quote(value)} is {len(value)} characters long; use {bound} characters"
            )
            return None
        return value

    def pattern(
        self,
        fields: Mapping[str, object],
        key: str,
        path: str,
        *,
        regex: re.Pattern[str],
        max_chars: int,
        allowed: str,
    ) -> str | None:
        """A string field that must match ``regex`` in full; ``allowed`` says so in words."""
        value = self.string(fields, key, path, max_chars=max_chars, min_chars=1)
        if value is None:
            return None
        if not regex.fullmatch(value):
            self.problem(child(path, key), f"{quote(value)} is not allowed; {allowed}")
            return None
        return value

    def integer(
        self,
        fields: Mapping[str, object],
        key: str,
        path: str,
        *,
        minimum: int,
        maximum: int | None = None,
    ) -> int | None:
        """An integer field within ``minimum..maximum``; booleans and 4.0 are not integers."""
        if key not in fields:
            return None
        value, where = fields[key], child(path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(where, "an integer", value)
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            self.problem(where, f"{value} is out of range; use an integer {bound}")
            return None
        return value

    def boolean(self, fields: Mapping[str, object], key: str, path: str) -> bool | None:
        """A ``true``/``false`` field; 1, 0 and "true" are not booleans."""
        if key not in fields:
            return None
        value = fields[key]
        if not isinstance(value, bool):
            self.wrong_type(child(path, key), "true or false", value)
            return None
        return value

    def enum(
        self,
        fields: Mapping[str, object],
        key: str,
        path: str,
        allowed: tuple[_S, ...],
    ) -> _S | None:
        """A string field that must be one of ``allowed``, spelled exactly as SageMaker does."""
        if key not in fields:
            return None
        value, where = fields[key], child(path, key)
        if not isinstance(value, str):
            self.wrong_type(where, "a string", value)
            return None
        for choice in allowed:
            if value == choice:
                return choice
        message = f"{quote(value)} is not allowed; use one of {', '.join(allowed)}"
        guess = closest(value, allowed)
        if guess is not None:
            message += f' (did you mean "{guess}"?)'
        self.problem(where, message)
        return None


# ---------------------------------------------------------------------- the shape
# The job document's keys, as SageMaker spells them, and where each one lives.

TOP = (
    "TransformJobName", "ModelName", "MaxConcurrentTransforms", "MaxPayloadInMB",
    "BatchStrategy", "ModelClientConfig", "Environment", "TransformInput", "TransformOutput",
    "TransformResources", "DataProcessing", "Agent",
)  # fmt: skip
# The rest of CreateTransformJob, what DescribeTransformJob adds, and the ResponseMetadata
# that boto3 adds to every response: accepted so a described job replays unchanged.
TOP_IGNORED = (
    "DataCaptureConfig", "Tags", "ExperimentConfig", "TransformJobArn", "TransformJobStatus",
    "FailureReason", "CreationTime", "TransformStartTime", "TransformEndTime",
    "LabelingJobArn", "AutoMLJobArn", "ResponseMetadata",
)  # fmt: skip
CLIENT = ("InvocationsTimeoutInSeconds", "InvocationsMaxRetries")
INPUT = ("DataSource", "ContentType", "CompressionType", "SplitType")
OUTPUT = ("S3OutputPath", "Accept", "AssembleWith", "KmsKeyId")
RESOURCES = ("InstanceCount",)
# SageMaker's own limit on a transform job's InstanceCount; also the most instances
# --instance-count or an orchestrator's array size may name.
MAX_INSTANCE_COUNT = 100
RESOURCES_IGNORED = ("InstanceType", "VolumeKmsKeyId", "TransformAmiVersion")
PROCESSING = ("InputFilter", "OutputFilter", "JoinSource")
AGENT = (
    "ModelUrl", "ModelCommand", "ModelStartupTimeoutSeconds", "StateUri", "Coordination",
    "ReorderBufferMB", "LeaseTTLSeconds", "MaxResponseMB", "MaxRecordsPerRequest",
    "RequireLinePerRecord", "MaxFailedRecords", "FailedRecordPlaceholder", "ModelReplicas",
    "ReplicaDevices", "ReplicaRestarts", "ModelDir", "ContainerRuntime", "ShardSizeMB",
    "MetricsPort", "MetricsAddress", "MetricsPushgatewayUrl", "MetricsPushIntervalSeconds",
)  # fmt: skip
# Where each known key lives, so a key at the wrong level gets "belongs under ...".
HOME: dict[str, str] = {
    **{key: "$.ModelClientConfig" for key in CLIENT},
    **{key: "$.TransformInput" for key in INPUT},
    **{key: "$.TransformInput.DataSource" for key in ("S3DataSource",)},
    **{key: "$.TransformInput.DataSource.S3DataSource" for key in ("S3DataType", "S3Uri")},
    **{key: "$.TransformOutput" for key in OUTPUT},
    **{key: "$.TransformResources" for key in RESOURCES + RESOURCES_IGNORED},
    **{key: "$.DataProcessing" for key in PROCESSING},
    **{key: "$.Agent" for key in AGENT},
    **{key: "$" for key in TOP + TOP_IGNORED},
}

REQUIRED: dict[str, tuple[str, ...]] = {
    "TransformInput": ("DataSource",),
    "DataSource": ("S3DataSource",),
    "S3DataSource": ("S3DataType", "S3Uri"),
    "TransformOutput": ("S3OutputPath",),
}

JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
MODEL_NAME = re.compile(r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?")
ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,1023}")
KMS_KEY = re.compile(r"[a-zA-Z0-9:/_-]*")
HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: safe as an HTTP header value
S3_SOURCE_EXAMPLE = '{"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/prefix/"}'
MISSING_HINTS = {
    "TransformJobName": "give a name of 1 to 63 letters, digits and hyphens",
    "TransformInput": f'give {{"DataSource": {{"S3DataSource": {S3_SOURCE_EXAMPLE}}}}}',
    "DataSource": f'give {{"S3DataSource": {S3_SOURCE_EXAMPLE}}}',
    "S3DataSource": f"give {S3_SOURCE_EXAMPLE}",
    "S3DataType": "give S3Prefix or ManifestFile",
    "S3Uri": URI_FORMS,
    "TransformOutput": 'give {"S3OutputPath": "s3://bucket/prefix/"}',
    "S3OutputPath": URI_FORMS,
}
NAME_RULE = "use 1 to 63 letters, digits and hyphens, starting and ending with a letter or digit"
ENV_MAX_ENTRIES = 16
ENV_VALUE_MAX_CHARS = 10240
FILTER_MAX_CHARS = 63
# Agent.FailedRecordPlaceholder: one line of output per failed record.
PLACEHOLDER_MAX_CHARS = 4096
MAX_RESPONSE_MB = 16_384  # Agent.MaxResponseMB: 1 MiB to 16 GiB per answer
MAX_SHARD_MB = 1_048_576  # Agent.ShardSizeMB: at most 1 TiB a shard
MAX_PAYLOAD_MB = 100  # MaxPayloadInMB: 0 (no bound) to 100 MiB per request body


def control_character(text: str) -> str | None:
    """Where ``text`` holds a control character (or a line break), said without quoting it.

    Such a character would split or forge a log line; the message names its code point
    and position only, so it is safe whatever the rest of the text holds.
    """
    for index, char in enumerate(text):
        if unicodedata.category(char) in _CONTROL_CATEGORIES:
            what = (
                "a NUL character" if char == "\x00" else f"the control character U+{ord(char):04X}"
            )
            return f"holds {what} at character {index + 1}; remove it"
    return None


# ---------------------------------------------------------------------- encodable text

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_RULE = (
    "half of a UTF-16 pair, which no S3 key, path, command or environment variable can hold; "
    "write the character itself, or both halves of its pair"
)


def lone_surrogates(document: object) -> list[Problem]:
    """A problem for every string of ``document``, key or value, that is not Unicode text.

    JSON's ``\\uXXXX`` escapes can spell half of a UTF-16 pair on its own (``"\\ud800"``);
    such a string cannot be encoded as UTF-8, so it would fail wherever it is used. The
    messages name the JSON path and the position, never the value (it may be a secret).
    """
    try:
        orjson.dumps(document)
        return []  # every string encodes (the usual case, checked at C speed)
    except orjson.JSONEncodeError:
        pass  # a surrogate, or what orjson does not write (a huge integer, deep nesting): look
    problems: list[Problem] = []

    def look(path: str, text: str, what: str) -> None:
        if (found := _SURROGATE.search(text)) is not None:
            code = f"\\u{ord(found.group()):04x}"
            message = f"{what} holds an unpaired surrogate {code} at character {found.start()}"
            problems.append(Problem(path, f"{message} ({_SURROGATE_RULE})"))

    stack: list[tuple[str, object]] = [("$", document)]
    while stack:  # not recursive: a deeply nested document is no error of its own
        path, value = stack.pop()
        if isinstance(value, str):
            look(path, value, "the value")
        elif isinstance(value, dict):
            items: list[tuple[str, object]] = []
            for key, item in value.items():
                if isinstance(key, str):
                    look(child(path, key), key, "the key")
                items.append((child(path, key), item))
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(child(path, i), item) for i, item in enumerate(value)]))
    return problems
