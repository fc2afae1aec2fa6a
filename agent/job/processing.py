"""Which DataProcessing settings a job may combine, checked at validation (docs/design.md §2.5).

Each side of the model has a record format. The input side (InputFilter, and the records
JoinSource joins) reads ``ContentType``; the output side (the answers JoinSource and
OutputFilter take apart) reads ``Accept``, or ``ContentType`` when ``Accept`` is absent.
A side with nothing to do is not checked, so an image model may still use an
OutputFilter on its JSON answers. Media types compare without case and parameters
(``text/csv; charset=utf-8`` is ``text/csv``).

* ``text/csv``: SplitType Line and AssembleWith Line; filters pick columns by index.
* ``application/jsonlines``: SplitType Line, one JSON value per line.
* ``application/json``: SplitType None (the whole object is one JSON value) or Line (one
  JSON value per line, as JSON Lines).
* No media type at all: read as JSON, with a warning (decision: SageMaker does not say).
* JoinSource Input: Accept equal to ContentType, since each answer joins its record.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.job.jsonpath import JsonPath, PathSyntaxError, parse_path
from agent.job.schema import Checker, child, quote
from agent.job.types import DataProcessing, TransformInput, TransformOutput

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
SUPPORTED = (CSV, JSON, JSONLINES)
_LINE_ONLY = (CSV, JSONLINES)
_ALLOWED = "text/csv, application/json or application/jsonlines"
_PROCESSING = "$.DataProcessing"
_COMBINED = frozenset(
    (
        "$.TransformInput.ContentType",
        "$.TransformInput.SplitType",
        "$.TransformOutput.Accept",
        "$.TransformOutput.AssembleWith",
    )
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a processor needs, resolved from valid settings."""

    lines: bool  # SplitType Line: a record is a line; else the whole object
    input_csv: bool
    output_csv: bool
    input_filter: JsonPath
    output_filter: JsonPath
    join: bool


def media_type(header: str | None) -> str | None:
    """``text/csv`` out of ``Text/CSV; charset=utf-8``; ``None`` when absent or empty."""
    if header is None:
        return None
    kind = header.split(";", 1)[0].strip().lower()
    return kind or None


def is_default(processing: DataProcessing) -> bool:
    """Whether DataProcessing asks for nothing (filters ``$``, no join): the fast path."""
    return (
        processing.input_filter == "$"
        and processing.output_filter == "$"
        and processing.join_source == "None"
    )


def filter_problem(text: str) -> str | None:
    """Why a filter cannot be used, as a sentence for its JSON path; ``None`` if it can."""
    try:
        parse_path(text)
    except PathSyntaxError as error:
        return f"{quote(text)} is not a supported JSONPath filter: {error}"
    return None


def check_processing(
    check: Checker,
    processing: DataProcessing,
    transform_input: TransformInput | None,
    transform_output: TransformOutput | None,
) -> Plan | None:
    """Record every problem with how DataProcessing meets the rest of the job.

    Returns the plan when the combination is valid and DataProcessing does something;
    ``None`` otherwise. Filters that do not parse were reported where they were read; the
    rest of the combination is still checked, so that every problem shows at once.
    """
    if is_default(processing) or transform_input is None or transform_output is None:
        return None
    if any(problem.path in _COMBINED for problem in check.problems):
        return None  # a field it depends on is wrong already: no guesses on top of that
    input_filter, output_filter = (
        _parsed(processing.input_filter),
        _parsed(processing.output_filter),
    )
    join = processing.join_source == "Input"
    uses_input = join or processing.input_filter != "$"
    uses_output = join or processing.output_filter != "$"
    content_type = media_type(transform_input.content_type)
    accept = media_type(transform_output.accept)
    answers = accept or content_type
    split = transform_input.split_type
    found: dict[str, str] = {}  # JSON path -> message: one per field, however many reasons
    if join and accept != content_type:
        found["$.TransformOutput.Accept"] = (
            f"JoinSource Input joins each answer with its record, so Accept must equal "
            f"ContentType ({content_type or 'absent'}); found {accept or 'no Accept'}"
        )
    sides: list[tuple[str, str | None, JsonPath | None, str]] = []
    if uses_input:
        sides.append(("InputFilter", content_type, input_filter, "$.TransformInput.ContentType"))
    if uses_output:
        where = "$.TransformOutput.Accept" if accept else "$.TransformInput.ContentType"
        sides.append(("OutputFilter", answers, output_filter, where))
    for key, kind, path, where in sides:
        if kind is not None and kind not in SUPPORTED:
            found.setdefault(
                where,
                f"DataProcessing reads records as {_ALLOWED}; {kind} is not one of them "
                "(leave InputFilter and OutputFilter at $ and JoinSource at None to send it as is)",
            )
            continue
        if split in ("RecordIO", "TFRecord") or (kind in _LINE_ONLY and split != "Line"):
            found.setdefault(
                "$.TransformInput.SplitType",
                f"DataProcessing with {kind or 'JSON'} records needs SplitType Line"
                + (" (or None for one application/json document)" if kind != CSV else "")
                + f"; found {split}",
            )
        if kind == CSV:
            if transform_output.assemble_with != "Line":
                found.setdefault(
                    "$.TransformOutput.AssembleWith",
                    "DataProcessing with text/csv needs AssembleWith Line, one row per line",
                )
            if path is not None and not path.is_columnar:
                found.setdefault(
                    child(_PROCESSING, key),
                    f"{quote(path.text)} picks by name, but a text/csv row is an array of "
                    "columns; pick them by index, as in $[1:] or $[0,-1]",
                )
    for where, message in found.items():
        check.problem(where, message)
    if found or input_filter is None or output_filter is None:
        return None
    return Plan(
        lines=split == "Line",
        input_csv=content_type == CSV,
        output_csv=answers == CSV,
        input_filter=input_filter,
        output_filter=output_filter,
        join=join,
    )


def _parsed(text: str) -> JsonPath | None:
    """The parsed filter, or ``None`` when it does not parse (reported where it was read)."""
    try:
        return parse_path(text)
    except PathSyntaxError:
        return None


def processing_notes(
    processing: DataProcessing, transform_input: TransformInput, transform_output: TransformOutput
) -> list[str]:
    """Warnings for a valid job: inclusive slice ends, and JSON assumed for lack of a type."""
    notes: list[str] = []
    if is_default(processing):
        return notes
    filters = {"InputFilter": processing.input_filter, "OutputFilter": processing.output_filter}
    for key, text in filters.items():
        try:
            note = parse_path(text).inclusive_slice_note()
        except PathSyntaxError:
            continue
        if note is not None:
            notes.append(f"DataProcessing.{key} {note}")
    join = processing.join_source == "Input"
    uses_input = join or processing.input_filter != "$"
    uses_output = join or processing.output_filter != "$"
    if transform_input.content_type is None and (
        uses_input or (uses_output and transform_output.accept is None)
    ):
        notes.append(
            "DataProcessing: no ContentType (nor Accept), so records and answers are read as "
            "JSON; set ContentType to text/csv, application/json or application/jsonlines"
        )
    return notes
