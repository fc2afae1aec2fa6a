"""How a file's work ended, in words and in records: the error that failed it, the sentence
a user reads, and the record kept in its place."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.codec.gzip import GzipError
from agent.errors import BtAgentError
from agent.results import FileOutcome, FileResult
from agent.split import SplitError
from agent.storage import InputFile, OutputKeyError, StorageError

if TYPE_CHECKING:
    from agent.coordination.records import FileRecord


class FileFailed(BtAgentError):
    """A file cannot be transformed; the message names it and says why."""


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a file, out of the group its tasks raised."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for error in leaves:
        if not isinstance(error, asyncio.CancelledError):
            return error
    return leaves[0] if leaves else group


def message(item: InputFile, error: BaseException) -> str:
    """The sentence a user reads for a failed file: which file, where, and why."""
    if isinstance(error, SplitError | GzipError):
        return error.in_file(str(item.uri))
    if isinstance(error, FileFailed | StorageError | OutputKeyError):
        text = str(error)
        return text if str(item.uri) in text else f"{item.uri}: {text}"
    text = str(error) or type(error).__name__
    return text if str(item.uri) in text else f"{item.uri}: {text}"


def settled(
    results: list[FileOutcome], index: int, result: FileResult, record: FileRecord | None
) -> None:
    """Keep ``record`` in ``result``'s place when it says the same (each file's facts are
    then held once until the summary is written, not as a result and a record)."""
    if record is not None and record.Status == result.status:
        results[index] = record
