"""Errors of the split stage, shared by the compiled splitters and their pure twin.

Every message is built here, by one function per rule, so both twins say exactly the
same thing. A message names the byte offset and the rule broken; the caller prefixes
the file with :meth:`SplitError.in_file`.
"""

from __future__ import annotations

from agent._compat import MIB
from agent.errors import BtAgentError

RECORDIO_MAGIC = 0xCED7230A


class SplitError(BtAgentError, ValueError):
    """Input that cannot be cut into records and request bodies as docs/design.md §2 says.

    ``offset`` is the absolute byte offset (in the uncompressed input) the message
    names; ``str(error)`` is a sentence without the file name.
    """

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message

    def in_file(self, name: str) -> str:
        """The message prefixed with the file it concerns, as users should see it."""
        return f"{name}: {self.message}"

    def __reduce__(self) -> tuple[type[SplitError], tuple[int, str]]:
        return type(self), (self.offset, self.message)


class CorruptInputError(SplitError):
    """Framing that breaks its format: truncated, bad magic, bad checksum, bad cflag order."""


class RecordTooLargeError(SplitError):
    """A record (or a ``None`` object) that cannot fit in one request body."""

    def __init__(self, offset: int, message: str, size: int = 0, limit: int = 0) -> None:
        super().__init__(offset, message)
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[type[SplitError], tuple[int, str, int, int]]:  # type: ignore[override]
        return type(self), (self.offset, self.message, self.size, self.limit)


def _bound(limit: int) -> str:
    if limit % MIB == 0:
        return f"the {limit}-byte bound (MaxPayloadInMB={limit // MIB})"
    return f"the {limit}-byte bound"


def too_large(offset: int, size: int, limit: int, what: str) -> RecordTooLargeError:
    """``what``: ``record`` (bytes as in the file), ``payload``, ``object`` or ``filtered``."""
    if what == "object":
        head = f"the object is {size} bytes"
    elif what == "payload":
        head = f"the record at byte {offset} has a {size}-byte payload"
    elif what == "filtered":
        head = f"the filtered record from byte {offset} is {size} bytes"
    else:
        head = f"the record at byte {offset} is {size} bytes"
    message = (
        f"{head}, larger than {_bound(limit)}; raise MaxPayloadInMB (0 streams without a bound)"
        " or make the record smaller"
    )
    return RecordTooLargeError(offset, message, size, limit)


def truncated_header(fmt: str, offset: int, have: int, need: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"{fmt} frame at byte {offset} is truncated: the input ends {have} bytes into its "
        f"{need}-byte header",
    )


def truncated_frame(
    fmt: str, offset: int, have: int, payload: int, frame: int
) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"{fmt} frame at byte {offset} is truncated: its header announces {payload} payload "
        f"bytes (a {frame}-byte frame) but the input ends {have} bytes into it",
    )


def bad_magic(offset: int, found: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"RecordIO frame at byte {offset} starts with 0x{found:08x} where the magic "
        f"0x{RECORDIO_MAGIC:08x} belongs: the input is not dmlc RecordIO, or is corrupt here",
    )


def bad_cflag(offset: int, cflag: int) -> CorruptInputError:
    return CorruptInputError(
        offset, f"RecordIO frame at byte {offset} has cflag {cflag}; valid values are 0 to 3"
    )


_PART = {0: "a whole record", 1: "the first part", 2: "a middle part", 3: "the last part"}


def orphan_part(offset: int, cflag: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"RecordIO frame at byte {offset} has cflag {cflag} ({_PART[cflag]} of a multi-part "
        "record) but no multi-part record is open",
    )


def unclosed_before(offset: int, cflag: int, opened: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"RecordIO frame at byte {offset} has cflag {cflag} ({_PART[cflag]}) while the "
        f"multi-part record opened at byte {opened} has not closed",
    )


def unclosed_at_end(opened: int) -> CorruptInputError:
    return CorruptInputError(
        opened,
        f"RecordIO multi-part record at byte {opened} never closes: the input ends before "
        "its last part (cflag 3)",
    )


def bad_length_crc(offset: int, stored: int, computed: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"TFRecord frame at byte {offset} has a bad length checksum (stored 0x{stored:08x}, "
        f"computed 0x{computed:08x}): the input is not TFRecord, or is corrupt here",
    )


def bad_payload_crc(offset: int, length: int, stored: int, computed: int) -> CorruptInputError:
    return CorruptInputError(
        offset,
        f"TFRecord frame at byte {offset} has a bad payload checksum (stored 0x{stored:08x}, "
        f"computed 0x{computed:08x} over its {length} payload bytes): the record is corrupt",
    )


def bad_arguments(split_type: str, batch_strategy: str, bound: int) -> ValueError:
    return ValueError(
        f"cannot split with SplitType={split_type!r}, BatchStrategy={batch_strategy!r}, "
        f"bound={bound!r}: expected SplitType None, Line, RecordIO or TFRecord, BatchStrategy "
        "MultiRecord or SingleRecord, and a bound of 0 or more bytes"
    )


def bad_max_records(max_records: object) -> ValueError:
    return ValueError(
        f"cannot split with max_records={max_records!r}: expected an integer, "
        "0 for no cap on the records in a body or a cap of 1 or more"
    )


class SplitterStateError(BtAgentError, RuntimeError):
    """A splitter used after ``finish()``: a bug in the caller, not in the data."""
