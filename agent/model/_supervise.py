"""The model command's supervisor: it ends the whole model process group when the agent dies.

``agent.model.process`` starts this file, not the model command, as its child:

    python -I _supervise.py PARENT_PID GRACE_SECONDS STATUS_FD -- COMMAND ARGS...

It runs in the session and process group the agent gave it, and starts the command in that
same group, so the group holds the supervisor, the model server and the server's own
workers. It writes ``ok <pid>`` (or ``error <errno> <reason>``) on ``STATUS_FD`` once the
command was executed (or could not be), then waits for it and exits as it did: with its
status, or killed by the same signal.

While the agent lives, the agent stops the group itself (SIGTERM to the group, SIGKILL after
its grace period); the supervisor ignores SIGTERM, SIGINT and SIGHUP so it outlives the
server and reports how the server ended. When the agent dies, even by SIGKILL, the kernel
sends this process ``SIGUSR1`` (``PR_SET_PDEATHSIG``, Linux); elsewhere a poll of the parent
pid notices within a second. Then the supervisor sends the group SIGTERM, waits up to
``GRACE_SECONDS`` for the server, and sends the group SIGKILL, which ends it too.

Run with ``-I``: it imports only the standard library, and neither the job's environment
(``PYTHONPATH``) nor the current directory may change what it runs. The environment it
gets is the model's, passed on unchanged.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from types import FrameType

_PR_SET_PDEATHSIG = 1
_DEATH_SIGNAL = signal.SIGUSR1
_POLL_SECONDS = 1.0  # where there is no death signal: how often the parent is checked
_STEP_SECONDS = 0.05


class _Orphaned(Exception):
    """The agent died: the group must go."""


def _death_signal_set() -> bool:
    """Ask the kernel for ``_DEATH_SIGNAL`` when the parent dies; ``False`` where it can't."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(_DEATH_SIGNAL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _end_group(grace_seconds: float) -> None:
    """SIGTERM the group, wait for the command up to the grace period, SIGKILL the group."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, _DEATH_SIGNAL):
        signal.signal(signum, lambda *_: None)  # no second orphan run; wait through signals
    group = os.getpgrp()
    try:
        os.killpg(group, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)  # the command is this process's only child
        except ChildProcessError:
            break  # it has ended (or was never started)
        if done:
            break
        time.sleep(_STEP_SECONDS)
    os.killpg(group, signal.SIGKILL)  # the server's workers, and this process too


def _report(fd: int, text: str) -> None:
    """Tell the agent how the start went; it may be gone already."""
    try:
        os.write(fd, text.encode("utf-8", "replace"))
        os.close(fd)
    except OSError:
        pass


def _wait(child: int, parent: int, watched: bool) -> int:
    """The command's wait status; raises ``_Orphaned`` if the agent dies first."""
    while True:
        if watched:  # the death signal interrupts the wait
            return os.waitpid(child, 0)[1]
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return status
        time.sleep(_POLL_SECONDS)
        if os.getppid() != parent:
            raise _Orphaned


def _exit_as(status: int) -> None:
    """End this process as the command ended: its exit status, or its signal."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        sys.exit(code)
    signum = -code
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # a signal that does not end a process by default


def main(argv: list[str]) -> None:
    parent, grace_seconds, status_fd = int(argv[0]), float(argv[1]), int(argv[2])
    command = argv[4:]  # argv[3] is "--"

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == _DEATH_SIGNAL and os.getppid() != parent:
            raise _Orphaned

    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, _DEATH_SIGNAL):
            signal.signal(signum, on_signal)  # handlers, not SIG_IGN: exec resets them
        watched = _death_signal_set()
        if os.getppid() != parent:  # the agent died before the death signal was set
            raise _Orphaned
        try:
            child = subprocess.Popen(command)  # same group, stdio and environment as this
        except OSError as error:
            _report(status_fd, f"error {error.errno or 0} {error.strerror or error}")
            sys.exit(127)
        _report(status_fd, f"ok {child.pid}")
        status = _wait(child.pid, parent, watched)
    except _Orphaned:
        _end_group(grace_seconds)
        return
    # The command ended by itself or on the agent's signal: the agent cleans up the group.
    _exit_as(status)


if __name__ == "__main__":
    main(sys.argv[1:])
