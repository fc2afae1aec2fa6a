"""``Agent.ModelCommand``: the model server the agent starts, watches and stops itself.

``ModelProcess`` is an async context manager. On entry it starts the command (an argv
list, no shell) in a session and process group of its own, under a small supervisor
(``agent/model/_supervise.py``) that ends the whole group if the agent dies, even by
SIGKILL. The command gets a few of the agent's variables (no credentials), the job's
``Environment`` and the ``SAGEMAKER_*`` execution variables (``agent.model.environment``).
Its stdout and stderr go into one bounded buffer whose tail ends up in error messages;
none of it reaches the agent's log except at debug level. ``died`` resolves to a
``ModelExit`` when the command exits by itself, so waiting for ``/ping`` and every
in-flight request can fail at once instead of timing out. On exit, whatever the outcome
(cancellation included), the whole group gets SIGTERM, then SIGKILL after
``grace_seconds``, and is reaped.

The variables are the job's, never logged: ``Environment`` values may be secrets, and the
output tail is redacted wherever it is written (``agent.redact``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from agent.errors import BtAgentError
from agent.job import JobSettings
from agent.model.environment import model_environment

__all__ = [
    "ModelCommandError",
    "ModelExit",
    "ModelProcess",
    "ensure_port_free",
]

log = logging.getLogger("agent.model_process")

_READ_CHUNK_BYTES = 1 << 16
_EOF_WAIT_SECONDS = 0.5  # after the exit, how long a grandchild may keep the pipe open
_KILL_WAIT_SECONDS = 5.0  # how long the kernel may take to end a SIGKILLed group


SUPERVISOR = str(Path(__file__).with_name("_supervise.py"))
_STATUS_TIMEOUT_SECONDS = 60.0  # for the supervisor to start (the interpreter's start-up)


async def _read_status(fd: int) -> str:
    """What the supervisor wrote on its status pipe, once it closed it ("" if nothing)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        data = await asyncio.wait_for(reader.read(), _STATUS_TIMEOUT_SECONDS)
    except TimeoutError:
        data = b""
    finally:
        transport.close()
    return data.decode("utf-8", "replace")


class ModelCommandError(BtAgentError, RuntimeError):
    """The model command could not be started."""


@dataclass(frozen=True, slots=True)
class ModelExit:
    """How the model command ended: its exit status and the tail of its output."""

    returncode: int  # negative: killed by that signal
    tail: str
    stopped: bool = False  # True when the agent stopped it (the job was ending)

    @property
    def summary(self) -> str:
        """``exited with status 3`` or ``was killed by signal 9 (SIGKILL)``."""
        if self.returncode >= 0:
            return f"exited with status {self.returncode}"
        try:
            name = signal.Signals(-self.returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {-self.returncode} ({name})"

    def explain(self, context: str = "") -> str:
        """``exited with status 3 <context>; its last output: …``, for error messages."""
        how = f"{self.summary} {context}" if context else self.summary
        if not self.tail.strip():
            return f"{how}; it printed nothing"
        return f"{how}; its last output:\n{self.tail.rstrip()}"


async def ensure_port_free(model_url: str, timeout_seconds: float = 2.0) -> None:
    """Raise ``ModelCommandError`` if something already accepts connections at ``model_url``.

    Before the agent starts its own model server: a server left over from an earlier run
    (or any other program) on that port would answer in its place. Only a TCP connection
    is opened and closed; nothing is sent.
    """
    parts = urlsplit(model_url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # not a usable port: the model client reports it
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except (OSError, TimeoutError):
        return  # refused (nothing listens), unreachable or silent: the port is free to us
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise ModelCommandError(
        f"another process is already listening on {where}, the address of Agent.ModelUrl, "
        "before Agent.ModelCommand was started (perhaps a model server left over from an "
        "earlier run); nothing was sent to it. Stop that process (`ss -ltnp` shows which "
        "one holds the port) or give the job another port in Agent.ModelUrl and the command"
    )


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies count as gone.

    ``killpg(pgid, 0)`` would count zombies too, and an orphan's zombie lingers for good
    under a container init that never reaps; so on Linux, read /proc.
    """
    proc = "/proc"
    if not os.path.exists(f"{proc}/self/stat"):  # not Linux
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue  # it ended while we looked
        fields = text[text.rindex(b")") + 2 :].split()  # the name may hold spaces
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


class _Tail:
    """The last ``max_bytes`` of a byte stream, shown as at most ``max_lines`` lines."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._data = bytearray()
        self._trimmed = False

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.max_bytes
        if excess > 0:
            del self._data[:excess]
            self._trimmed = True

    def text(self) -> str:
        lines = self._data.decode("utf-8", "replace").splitlines()
        if self._trimmed and lines:
            lines = lines[1:]  # the first line was cut somewhere in its middle
        return "\n".join(lines[-self.max_lines :])


class ModelProcess:
    """The running ``Agent.ModelCommand``; ``async with ModelProcess(argv, env=…) as model``.

    ``died`` resolves to a ``ModelExit`` once the command has exited and its output has been
    read; ``tail()`` is its latest output at any time.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        grace_seconds: float = 10.0,
        tail_lines: int = 64,
        tail_bytes: int = 8192,
    ) -> None:
        if not argv:
            raise ModelCommandError("Agent.ModelCommand is empty; give the argv of the server")
        self.argv = tuple(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.grace_seconds = grace_seconds
        self._tail = _Tail(tail_lines, tail_bytes)
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._signalled = False  # the group has been sent a signal
        self._stopped = False  # stop() has run to its end: the group is gone
        self._died: asyncio.Future[ModelExit] | None = None
        self.model_pid: int | None = None  # the command's own pid, under the supervisor

    @classmethod
    def from_settings(cls, settings: JobSettings, *, grace_seconds: float = 10.0) -> ModelProcess:
        """The job's ``Agent.ModelCommand`` with ``model_environment(settings)``."""
        argv = settings.agent.model_command
        if argv is None:
            raise ModelCommandError("the job has no Agent.ModelCommand to start")
        return cls(argv, env=model_environment(settings), grace_seconds=grace_seconds)

    @property
    def pid(self) -> int:
        """The supervisor's pid, which is also the process group id of the command."""
        if self._process is None:
            raise ModelCommandError("the model command has not been started")
        return self._process.pid

    @property
    def died(self) -> asyncio.Future[ModelExit]:
        if self._died is None:
            raise ModelCommandError("the model command has not been started")
        return self._died

    def tail(self) -> str:
        """The last lines the command printed (stdout and stderr interleaved)."""
        return self._tail.text()

    async def __aenter__(self) -> ModelProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the command under its supervisor; ``ModelCommandError`` if it cannot run."""
        if not sys.executable:
            raise ModelCommandError(
                "cannot start Agent.ModelCommand: this Python does not know its own "
                "interpreter (sys.executable is empty), which runs the model's supervisor"
            )
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            supervisor = [sys.executable, "-I", SUPERVISOR, str(os.getpid())]
            supervisor += [repr(self.grace_seconds), str(write_fd), "--"]
            self._process = await asyncio.create_subprocess_exec(
                *supervisor,
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own group: stop() reaches its children too
                pass_fds=(write_fd,),
            )
        except OSError as error:
            os.close(read_fd)
            reason = error.strerror or str(error)
            raise ModelCommandError(
                f"cannot start Agent.ModelCommand {self.argv[0]!r}: {reason}"
            ) from error
        finally:
            os.close(write_fd)
        process = self._process
        try:
            answer = await _read_status(read_fd)
        except BaseException:
            self._signal_group(signal.SIGKILL)  # cancelled while it started: it must not stay
            raise
        if not answer.startswith("ok "):
            self._signal_group(signal.SIGKILL)
            await process.wait()
            assert process.stdout is not None
            output = (await process.stdout.read(8192)).decode("utf-8", "replace").strip()
            if answer.startswith("error "):
                reason = answer.split(" ", 2)[-1]
            else:
                reason = (
                    f"its supervisor (pid {process.pid}) did not report the start within "
                    f"{_STATUS_TIMEOUT_SECONDS:g} s or ended first; its output: "
                    f"{output or '(none)'}"
                )
            raise ModelCommandError(
                f"cannot start Agent.ModelCommand {self.argv[0]!r}: {reason}; give an "
                "executable on PATH or an absolute path, as an argv list (no shell)"
            )
        self.model_pid = int(answer.split()[1])
        self._died = loop.create_future()
        log.info(
            "started the model command %s as pid %d (its process group; the command itself "
            "is pid %d)",
            self.argv[0],
            process.pid,
            self.model_pid,
        )
        self._pump = asyncio.create_task(self._read_output(process))
        self._watch = asyncio.create_task(self._wait_exit(process, self._pump))

    async def _read_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        debug = log.isEnabledFor(logging.DEBUG)
        partial = bytearray()  # debug lines are logged whole, so redaction sees each secret
        while chunk := await process.stdout.read(_READ_CHUNK_BYTES):
            self._tail.add(chunk)
            if debug:
                partial += chunk
                end = partial.rfind(b"\n") + 1
                if end == 0 and len(partial) < _READ_CHUNK_BYTES:
                    continue
                text, partial = bytes(partial[: end or None]), partial[end or len(partial) :]
                log.debug("model output: %s", text.decode("utf-8", "replace").rstrip())
        if partial:
            log.debug("model output: %s", partial.decode("utf-8", "replace").rstrip())

    async def _wait_exit(
        self, process: asyncio.subprocess.Process, pump: asyncio.Task[None]
    ) -> None:
        returncode = await process.wait()
        stopped = self._signalled
        # The last lines are the ones that explain an exit: give the pipe a moment to drain.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(pump), _EOF_WAIT_SECONDS)
        exit = ModelExit(returncode, self.tail(), stopped=stopped)
        if not stopped:
            log.warning("the model command (pid %d) %s", process.pid, exit.summary)
        assert self._died is not None
        if not self._died.done():
            self._died.set_result(exit)

    async def _wait_group_gone(self, timeout_seconds: float) -> None:
        """Wait until no process of the group runs: SIGKILL is delivered, not yet done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while _group_alive(self.pid):
            if loop.time() >= deadline:
                log.warning("processes of group %d survive SIGKILL", self.pid)
                return
            await asyncio.sleep(0.01)

    def _signal_group(self, signum: int) -> None:
        self._signalled = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def stop(self) -> ModelExit | None:
        """SIGTERM the group, SIGKILL it after ``grace_seconds``, reap it; idempotent.

        Returns how the command ended (``None`` if it never started). If the caller is
        cancelled meanwhile, the group is killed at once before the cancellation goes on.
        """
        process = self._process
        if process is None or self._watch is None:
            return None
        if self._stopped:
            return self.died.result()
        try:
            if process.returncode is None:
                self._signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), self.grace_seconds)
                except TimeoutError:
                    log.warning(
                        "the model command (pid %d) ignored SIGTERM for %g s; killing it",
                        process.pid,
                        self.grace_seconds,
                    )
                    self._signal_group(signal.SIGKILL)
                    await process.wait()
            # Children that outlived the leader are orphans now: nothing will stop them.
            self._signal_group(signal.SIGKILL)
            await self._wait_group_gone(_KILL_WAIT_SECONDS)
            self._stopped = True
            await self._watch
        except BaseException:
            self._signal_group(signal.SIGKILL)
            raise
        finally:
            if self._pump is not None and not self._pump.done():
                self._pump.cancel()  # a process outside the group still holds the pipe
        return self.died.result()
