"""The one error root of bt-agent, and the table of its exit codes.

Every exception class defined in ``agent`` derives from :class:`BtAgentError`, directly or
through the root of its own module (``StorageError``, ``ModelError``, ``SplitError``, ...),
and keeps the built-in base its callers catch (``ValueError``, ``RuntimeError``, ...).
(One exception: ``agent.model._supervise`` runs as a standalone script in a process of
its own and imports only the standard library.) Each class carries the exit code the
command ends with when that error ends a run, as the class attribute ``exit_code``:
:attr:`ExitCode.FAILED` from the root, or :attr:`ExitCode.USAGE` for the errors of the
job's own making (:class:`UsageError`). Where the runner, ``status``, ``plan`` and
``split`` end on an error, they return its ``exit_code``; no other module defines an
exit code.

This module is at the bottom of the layering, below every other: it imports nothing from
``agent``, and every module that defines an error imports it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import ClassVar, Final


class ExitCode(IntEnum):
    """Every exit code of ``bt-agent`` (the README's "Exit codes" section lists them for users)."""

    COMPLETED = 0  # every file succeeded
    FAILED = 1  # some file failed; the others still finished
    USAGE = 2  # invalid job file or command line; nothing was touched
    SIGINT = 130  # stopped by Ctrl-C
    SIGTERM = 143  # stopped by SIGTERM


# What each code means, in the words of ``bt-agent --help``.
EXIT_CODE_LABELS: Final[Mapping[ExitCode, str]] = MappingProxyType(
    {
        ExitCode.COMPLETED: "completed",
        ExitCode.FAILED: "failed (some file failed)",
        ExitCode.USAGE: "invalid job or usage",
        ExitCode.SIGINT: "interrupted (SIGINT)",
        ExitCode.SIGTERM: "stopped (SIGTERM)",
    }
)

# The signals that stop a run, and the code each ends it with.
EXIT_BY_SIGNAL: Final[Mapping[signal.Signals, ExitCode]] = MappingProxyType(
    {signal.SIGINT: ExitCode.SIGINT, signal.SIGTERM: ExitCode.SIGTERM}
)


class BtAgentError(Exception):
    """The root of every bt-agent error: a failure (exit 1) unless a subclass says otherwise."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class UsageError(BtAgentError):
    """A problem of the job's own making (its file, the command line, the instance identity,
    the inputs it names, settings that differ from the stored results): exit 2."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE
